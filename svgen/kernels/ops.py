"""Fused glue as PyTorch operators, each with its own backward operator (issue 23):

- ``torch.ops.svgen.geglu``: h * GELU(gate) of a projection (triton_glu.py); saves only its input;
  ``torch.ops.svgen.geglu_shift`` also moves half its output channels one frame later (the video
  encoder's token shift), where PyTorch copies them twice forward and three times backward;
- ``torch.ops.svgen.group_norm_silu``: SiLU(GroupNorm(x)) (triton_gn.py); saves its input and
  the per-group statistics;
- ``torch.ops.svgen.row_norm``: s = x + r and y = norm(s) * w + b [+ pe] over the last dim
  (triton_rownorm.py): the transformer blocks' residual stream with its next layer norm (and the
  motion modules' position embedding), and the encoders' gain norm. Its backward takes the
  stream's own gradient in and returns one gradient for both x and r, so autograd never adds the
  two paths separately.

As operators they run as fused kernels on CUDA, the PyTorch reference elsewhere; on the meta
device (benchmarks/profile_step.py) each reads its inputs and writes its outputs once, which is
what the fused kernels move.
"""

from __future__ import annotations

import importlib.util

import torch

from svgen.kernels.reference import (geglu_backward_reference, geglu_reference, group_norm_silu_backward_reference,
                                     group_norm_silu_reference, row_norm_backward_reference, row_norm_reference,
                                     time_shift_reference, time_unshift_reference)


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


@torch.library.custom_op("svgen::geglu_shift", mutates_args=())
def geglu_shift_op(x: torch.Tensor) -> torch.Tensor:
    """GEGLU of x (B, T, ..., 2I) with the output's last I // 2 channels one frame later in time
    (the video encoder's token shift) in the same pass."""
    if _triton(x.device):
        from svgen.kernels.triton_glu import geglu_forward_triton

        return geglu_forward_triton(x, time_shift=True)
    return time_shift_reference(geglu_reference(x)).contiguous()


@geglu_shift_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@torch.library.custom_op("svgen::geglu_shift_backward", mutates_args=())
def geglu_shift_backward_op(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if _triton(x.device):
        from svgen.kernels.triton_glu import geglu_backward_triton

        return geglu_backward_triton(dy, x, time_shift=True)
    return geglu_backward_reference(time_unshift_reference(dy), x)


@geglu_shift_backward_op.register_fake
def _(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape)


def _shift_backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return geglu_shift_backward_op(dy, x)


geglu_shift_op.register_autograd(_shift_backward, setup_context=_setup)


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


@torch.library.custom_op("svgen::row_norm", mutates_args=())
def row_norm_op(x: torch.Tensor, r: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None,
                pe: torch.Tensor | None, eps: float, clamp: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, y, mean, rstd); s is empty when r is None (the norm's input is x itself)."""
    if _triton(x.device):
        from svgen.kernels.triton_rownorm import row_norm_forward_triton

        return row_norm_forward_triton(x, r, weight, bias, pe, eps, clamp)
    s, y, mean, rstd = row_norm_reference(x, r, weight, bias, pe, eps=eps, clamp=clamp)
    return (s.contiguous() if s is not None else x.new_empty(0)), y.contiguous(), mean, rstd


@row_norm_op.register_fake
def _(x, r, weight, bias, pe, eps, clamp):
    rows = x.numel() // max(x.shape[-1], 1)
    stats = x.new_empty((rows,), dtype=torch.float32)
    # Contiguous, as both implementations return them (whatever x's strides).
    return (x.new_empty(x.shape) if r is not None else x.new_empty(0)), x.new_empty(x.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("svgen::row_norm_backward", mutates_args=())
def row_norm_backward_op(dy: torch.Tensor, ds: torch.Tensor | None, s: torch.Tensor, weight: torch.Tensor | None,
                         bias: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor, eps: float, clamp: bool,
                         need_wb: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias); the parameter gradients empty where absent or not needed."""
    if _triton(s.device):
        from svgen.kernels.triton_rownorm import row_norm_backward_triton

        dx, dw, db = row_norm_backward_triton(dy, ds, s, weight, mean, rstd, eps, clamp, need_wb)
    else:
        dx, dw, db = row_norm_backward_reference(dy, ds, s, weight, bias, eps=eps, clamp=clamp)
        dw, db = (dw, db) if need_wb else (None, None)
    dw = dw.to(weight.dtype) if dw is not None and weight is not None else s.new_empty(0)
    db = db.to(bias.dtype) if db is not None and bias is not None else s.new_empty(0)  # outputs never alias
    return dx, dw, db


@row_norm_backward_op.register_fake
def _(dy, ds, s, weight, bias, mean, rstd, eps, clamp, need_wb):
    dw = torch.empty_like(weight) if need_wb and weight is not None else s.new_empty(0)
    db = torch.empty_like(bias) if need_wb and bias is not None else s.new_empty(0)
    return s.new_empty(s.shape), dw, db


def _rn_setup(ctx, inputs, output) -> None:
    x, r, weight, bias, pe, eps, clamp = inputs
    s, _, mean, rstd = output
    ctx.save_for_backward(s if r is not None else x, weight, bias, mean, rstd)
    ctx.eps, ctx.clamp, ctx.has_r = eps, clamp, r is not None
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)


def _rn_backward(ctx, ds, dy, _dmean, _drstd):
    need = ctx.needs_input_grad
    if dy is None and ds is None:
        return None, None, None, None, None, None, None
    s, weight, bias, mean, rstd = ctx.saved_tensors
    need_wb = bool((weight is not None and need[2]) or (bias is not None and need[3]))
    if dy is None:  # only the stream's own gradient: the norm adds nothing
        dx, dw, db = ds, None, None
    else:
        dx, dw, db = row_norm_backward_op(dy, ds if ctx.has_r else None, s, weight, bias, mean, rstd, ctx.eps,
                                          ctx.clamp, need_wb)
    dw = dw if need_wb and weight is not None and need[2] else None
    db = db if need_wb and bias is not None and need[3] else None
    return dx if need[0] else None, (dx if need[1] else None), dw, db, None, None, None


row_norm_op.register_autograd(_rn_backward, setup_context=_rn_setup)
