"""Less glue in the training step's frozen bases and added modules (issue 23), maths unchanged.

- Every GEGLU feed-forward on one implementation (``model.glu_kernel``): the bases' transformer
  blocks, the AnimateDiff motion modules and the CMC-PE blocks use diffusers' ``GEGLU`` (Linear,
  then h * GELU(gate)); the video encoder's token-shift feed-forward has its own. They all go
  through ``svgen.kernels.geglu``: on CUDA one fused Triton kernel forward and one backward
  instead of PyTorch's GELU, multiplies and concatenation.
- diffusers divides every attention output by ``rescale_output_factor`` and every resnet output
  by ``output_scale_factor``, both 1.0 in SD-1.5, AnimateDiff and AudioLDM: a full read and write
  of the activation forward and again backward, for nothing. A factor of exactly 1 becomes
  :data:`UNIT`, whose division returns the tensor itself (bit-identical: x / 1.0 == x).

Parameters and state_dict keys are unchanged.
"""

from __future__ import annotations

import torch
from diffusers.models.activations import GEGLU

from svgen.kernels import geglu


class FusedGEGLU(GEGLU):
    """diffusers' GEGLU with its activation on ``svgen.kernels.geglu`` (``kernel`` picks it)."""

    kernel: str = "auto"

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return geglu(self.proj(hidden_states), kernel=self.kernel)


class UnitScale:
    """A scale factor of exactly 1 that dividing by skips: ``tensor / UNIT`` is ``tensor``."""

    def __rtruediv__(self, other):
        return other

    def __float__(self) -> float:
        return 1.0

    def __eq__(self, other) -> bool:
        return other == 1.0 or isinstance(other, UnitScale)

    def __hash__(self) -> int:
        return hash(1.0)

    def __repr__(self) -> str:
        return "UnitScale(1.0)"


UNIT = UnitScale()
_UNIT_ATTRS = ("rescale_output_factor", "output_scale_factor")


def fuse_glue(modules: list[torch.nn.Module], glu_kernel: str) -> dict[str, int]:
    """Point every GEGLU under ``modules`` at ``glu_kernel`` and make every unit output scale
    :data:`UNIT`; returns how many of each were changed."""
    from svgen.models.encoders import TokenShiftFeedForward

    counts = {"geglu": 0, "unit_scales": 0}
    for root in modules:
        for m in root.modules():
            if type(m) in (GEGLU, FusedGEGLU):
                m.__class__ = FusedGEGLU
                m.kernel = glu_kernel
                counts["geglu"] += 1
            elif isinstance(m, TokenShiftFeedForward):
                m.glu_kernel = glu_kernel
                counts["geglu"] += 1
            for attr in _UNIT_ATTRS:
                if isinstance(getattr(m, attr, None), (int, float)) and getattr(m, attr) == 1.0:
                    setattr(m, attr, UNIT)
                    counts["unit_scales"] += 1
    return counts
