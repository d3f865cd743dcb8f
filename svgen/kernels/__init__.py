"""Fused kernels of the training step's hot paths. The CMC-PE op: LayerNorm of the hidden tokens
plus the other modality's embedding, resampled along time and broadcast over space/frequency
(docs/method.md, "Added modules" 3).

``norm_add_embedding`` dispatches to an implementation chosen by config and device; so does
``geglu`` (the gated feed-forward activation of the bases, motion modules, encoders and blocks)
and ``group_norm_silu`` (the resnets' norm and activation).
"""

from svgen.kernels.dispatch import add_layer_norm, gain_norm, geglu, geglu_time_shift, group_norm_silu, norm_add_embedding, resolve_kernel

__all__ = ["add_layer_norm", "gain_norm", "geglu", "geglu_time_shift", "group_norm_silu", "norm_add_embedding", "resolve_kernel"]
