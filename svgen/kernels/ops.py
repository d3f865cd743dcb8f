"""Fused glue as PyTorch operators, each with its own backward operator (issue 23):

- ``torch.ops.svgen.geglu``: h * GELU(gate) of a projection (triton_glu.py); saves only its input;
- ``torch.ops.svgen.group_norm_silu``: SiLU(GroupNorm(x)) (triton_gn.py); saves its input and
  the per-group statistics.

As operators they run as fused kernels on CUDA, the PyTorch reference elsewhere; on the meta
device (benchmarks/profile_step.py) each reads its inputs and writes its outputs once, which is
what the fused kernels move.
"""

from __future__ import annotations

import importlib.util

import torch

from svgen.kernels.reference import (geglu_backward_reference, geglu_reference, group_norm_silu_backward_reference,
                                     group_norm_silu_reference)


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


@torch.library.custom_op("svgen::group_norm_silu", mutates_args=())
def group_norm_silu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd): y = SiLU(GroupNorm(x)); per-group fp32 statistics for the backward."""
    if _triton(x.device):
        from svgen.kernels.triton_gn import group_norm_silu_forward_triton

        return group_norm_silu_forward_triton(x, weight, bias, groups, eps)
    xg = x.float().reshape(x.shape[0], groups, -1)
    var, mean = torch.var_mean(xg, dim=-1, unbiased=False)
    y = group_norm_silu_reference(x, weight, bias, groups=groups, eps=eps)
    return y, mean.reshape(-1), (var + eps).rsqrt().reshape(-1)


@group_norm_silu_op.register_fake
def _(x, weight, bias, groups, eps):
    stats = x.new_empty((x.shape[0] * groups,), dtype=torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("svgen::group_norm_silu_backward", mutates_args=())
def group_norm_silu_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                mean: torch.Tensor, rstd: torch.Tensor, groups: int, eps: float
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _triton(x.device):
        from svgen.kernels.triton_gn import group_norm_silu_backward_triton

        return group_norm_silu_backward_triton(dy, x, weight, bias, mean, rstd, groups)
    return group_norm_silu_backward_reference(dy, x, weight, bias, groups=groups, eps=eps)


@group_norm_silu_backward_op.register_fake
def _(dy, x, weight, bias, mean, rstd, groups, eps):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _gn_setup(ctx, inputs, output) -> None:
    x, weight, bias, groups, eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.groups, ctx.eps = groups, eps
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (absent) gradients


def _gn_backward(ctx, dy, _dmean, _drstd):
    if dy is None:
        return None, None, None, None, None
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = group_norm_silu_backward_op(dy, x, weight, bias, mean, rstd, ctx.groups, ctx.eps)
    need = ctx.needs_input_grad
    return dx if need[0] else None, dw if need[1] else None, db if need[2] else None, None, None


group_norm_silu_op.register_autograd(_gn_backward, setup_context=_gn_setup)
