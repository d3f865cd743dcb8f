"""The CMC-PE hot path: LayerNorm of the hidden tokens plus the other modality's embedding,
resampled along time and broadcast over space/frequency (docs/method.md, "Added modules" 3).

``norm_add_embedding`` dispatches to an implementation chosen by config and device.
"""

from svgen.kernels.dispatch import norm_add_embedding, resolve_kernel

__all__ = ["norm_add_embedding", "resolve_kernel"]
