"""Fused GEGLU in Triton, forward and backward: y = h * GELU(gate) for x = [h ; gate] (..., 2I).

Eager PyTorch runs GEGLU as GELU + multiply forward (reading the projection 1.5 times and writing
two I-wide tensors) and as two multiplies, GELU's backward and a concatenation backward (about
thirteen I-wide passes); these kernels read x once and write y once forward, and read the
gradient and x once and write dx once backward (issue 23: the bases' and motion modules'
feed-forwards are among the largest glue of the step). fp32 arithmetic whatever the input
dtype. Runs on CUDA, and on CPU under TRITON_INTERPRET=1 (how the tests check it against
``reference.geglu_reference``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _fwd_kernel(x_ptr, y_ptr, I, sx, T, HW, HALF, SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < I
    h = tl.load(x_ptr + row * sx + cols, mask=m, other=0.0).to(tl.float32)
    g = tl.load(x_ptr + row * sx + I + cols, mask=m, other=0.0).to(tl.float32)
    y = (h * (0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476)))).to(y_ptr.dtype.element_ty)
    if SHIFT:  # columns from HALF on move one frame (HW rows) later; the first frame's are zero
        t = (row // HW) % T + cols * 0
        late = cols >= HALF
        tl.store(y_ptr + row * I + cols, y, mask=m & (cols < HALF))
        tl.store(y_ptr + (row + HW) * I + cols, y, mask=m & late & (t < T - 1))
        tl.store(y_ptr + row * I + cols, tl.zeros_like(y), mask=m & late & (t == 0))
    else:
        tl.store(y_ptr + row * I + cols, y, mask=m)


@triton.jit
def _bwd_kernel(dy_ptr, x_ptr, dx_ptr, I, sdy, sx, T, HW, HALF, SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < I
    if SHIFT:  # the shifted columns' gradient comes from the next frame (none after the last)
        t = (row // HW) % T + cols * 0
        src = tl.where(cols < HALF, row, row + HW)
        dy = tl.load(dy_ptr + src * sdy + cols, mask=m & ((cols < HALF) | (t < T - 1)), other=0.0).to(tl.float32)
    else:
        dy = tl.load(dy_ptr + row * sdy + cols, mask=m, other=0.0).to(tl.float32)
    h = tl.load(x_ptr + row * sx + cols, mask=m, other=0.0).to(tl.float32)
    g = tl.load(x_ptr + row * sx + I + cols, mask=m, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.erf(g * 0.7071067811865476))
    pdf = tl.exp(-0.5 * g * g) * 0.3989422804014327
    out = dx_ptr + row * (2 * I) + cols
    tl.store(out, (dy * g * cdf).to(dx_ptr.dtype.element_ty), mask=m)
    tl.store(out + I, (dy * h * (cdf + g * pdf)).to(dx_ptr.dtype.element_ty), mask=m)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, width) with a unit stride along the width (a copy only when it has none)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _shift_args(x: torch.Tensor, time_shift: bool) -> tuple[int, int, int]:
    """(T, rows per frame, first shifted column) of x (B, T, ..., 2I) for the token shift."""
    if not time_shift:
        return 1, 1, 0
    if x.ndim < 3:
        raise ValueError(f"the token shift needs x (B, T, ..., 2I), got {tuple(x.shape)}")
    i = x.shape[-1] // 2
    return x.shape[1], x[0, 0, ..., 0].numel(), i - i // 2


def geglu_forward_triton(x: torch.Tensor, time_shift: bool = False) -> torch.Tensor:
    """h * GELU(gate); with ``time_shift`` (x (B, T, ..., 2I)) the output's last I // 2 channels
    are moved one frame forward in time, zeros in the first frame (the video encoder's token shift)."""
    if x.shape[-1] % 2:
        raise ValueError(f"GEGLU needs an even last dimension ([h ; gate]), got {tuple(x.shape)}")
    t, hw, half = _shift_args(x, time_shift)
    x2 = _rows(x)
    rows, I = x2.shape[0], x2.shape[1] // 2
    y = torch.empty((rows, I), device=x.device, dtype=x.dtype)
    if rows and I:
        _fwd_kernel[(rows, triton.cdiv(I, BLOCK))](x2, y, I, x2.stride(0), t, hw, half, SHIFT=time_shift, BLOCK=BLOCK)
    return y.reshape(*x.shape[:-1], I)


def geglu_backward_triton(dy: torch.Tensor, x: torch.Tensor, time_shift: bool = False) -> torch.Tensor:
    t, hw, half = _shift_args(x, time_shift)
    x2, dy2 = _rows(x), _rows(dy)
    rows, I = x2.shape[0], x2.shape[1] // 2
    dx = torch.empty((rows, 2 * I), device=x.device, dtype=x.dtype)
    if rows and I:
        _bwd_kernel[(rows, triton.cdiv(I, BLOCK))](dy2, x2, dx, I, dy2.stride(0), x2.stride(0), t, hw, half,
                                                   SHIFT=time_shift, BLOCK=BLOCK)
    return dx.reshape(x.shape)
