"""``torch.ops.svgen.geglu``: GEGLU as one operator with its own backward operator.

As one operator it runs as one fused kernel on CUDA (triton_glu.py), the PyTorch reference
elsewhere; on the meta device (benchmarks/profile_step.py) it reads x and writes y once, which
is what the fused kernel moves. It saves only its input for the backward.
"""

from __future__ import annotations

import importlib.util

import torch

from svgen.kernels.reference import geglu_backward_reference, geglu_reference


def _triton(device: torch.device) -> bool:
    """CUDA with the optional ``triton`` extra installed."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


@torch.library.custom_op("svgen::geglu", mutates_args=())
def geglu_op(x: torch.Tensor) -> torch.Tensor:
    if _triton(x.device):
        from svgen.kernels.triton_glu import geglu_forward_triton

        return geglu_forward_triton(x)
    return geglu_reference(x).contiguous()


@geglu_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@torch.library.custom_op("svgen::geglu_backward", mutates_args=())
def geglu_backward_op(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if _triton(x.device):
        from svgen.kernels.triton_glu import geglu_backward_triton

        return geglu_backward_triton(dy, x)
    return geglu_backward_reference(dy, x)


@geglu_backward_op.register_fake
def _(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])


def _backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return geglu_backward_op(dy, x)


geglu_op.register_autograd(_backward, setup_context=_setup)
