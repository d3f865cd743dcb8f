"""Fused row norms in Triton, forward and backward (issue 23): the transformer blocks' residual
stream and the encoders' gain norm.

    s = x + r                        (when a residual branch r is given; s is written once)
    y = norm(s) * w + b [+ pe[t]]    norm over the last dim C; pe (T, C) indexed by row % T

``norm`` is layer norm (rsqrt(var + eps)) or, with ``clamp``, the encoders' gain norm
(rsqrt(max(var, eps)), no gradient through var where it is clamped). Rounding follows the eager
ops it replaces: s is rounded to the stream's dtype before it is normalised, and y before pe is
added. The backward takes the gradient of s from downstream (``ds``) and adds it to the norm's
input gradient in the same pass, so the autograd engine never accumulates the two paths with a
separate addition; the weight and bias gradients are summed per program (deterministic) and
reduced by a small torch sum.

One program per row forward (C <= 8192 in one block); the backward programs each own a run of
rows. fp32 arithmetic whatever the dtype. Runs on CUDA, and on CPU under TRITON_INTERPRET=1 (how
the tests check it against ``reference.row_norm_reference``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_C = 8192


@triton.jit
def _fwd_kernel(x_ptr, r_ptr, w_ptr, b_ptr, pe_ptr, s_ptr, y_ptr, mean_ptr, rstd_ptr, C, T, eps,
                HAS_R: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_PE: tl.constexpr,
                CLAMP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < C
    x = tl.load(x_ptr + row * C + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_R:
        sv = (x + tl.load(r_ptr + row * C + cols, mask=m, other=0.0).to(tl.float32)).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + row * C + cols, sv, mask=m)
        x = sv.to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    d = tl.where(m, x - mean, 0.0)
    var = tl.sum(d * d, axis=0) / C
    if CLAMP:
        rstd = 1.0 / tl.sqrt(tl.maximum(var, eps))
    else:
        rstd = 1.0 / tl.sqrt(var + eps)
    y = d * rstd
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_PE:
        t = row % T
        y = y.to(y_ptr.dtype.element_ty).to(tl.float32) + tl.load(pe_ptr + t * C + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * C + cols, y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _bwd_kernel(dy_ptr, ds_ptr, s_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, rows, C, eps, RPP,
                HAS_DS: tl.constexpr, HAS_W: tl.constexpr, CLAMP: tl.constexpr, NEED_WB: tl.constexpr,
                BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < C
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    else:
        w = tl.where(m, 1.0, 0.0)
    acc_w = tl.zeros([BLOCK], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, RPP):
        row = pid * RPP + i
        mm = m & (row + cols * 0 < rows)
        off = row.to(tl.int64) * C + cols
        s = tl.load(s_ptr + off, mask=mm, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + off, mask=mm, other=0.0).to(tl.float32)
        last = tl.minimum(row, rows - 1)  # in bounds; the masked loads below zero a row past the end
        mean = tl.load(mean_ptr + last)
        rstd = tl.load(rstd_ptr + last)
        xhat = tl.where(mm, (s - mean) * rstd, 0.0)
        g = dy * w
        a = tl.sum(g, axis=0) / C
        b = tl.sum(g * xhat, axis=0) / C
        if CLAMP:  # the variance was clamped to eps: no gradient through it
            var = tl.sum(xhat * xhat, axis=0) / C / (rstd * rstd)
            b = tl.where(var < eps, 0.0, b)
        dx = rstd * (g - a - xhat * b)
        if HAS_DS:
            dx += tl.load(ds_ptr + off, mask=mm, other=0.0).to(tl.float32)
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mm)
        acc_w += dy * xhat
        acc_b += dy
    if NEED_WB:
        tl.store(dw_ptr + pid * C + cols, acc_w, mask=m)
        tl.store(db_ptr + pid * C + cols, acc_b, mask=m)


def _block(c: int) -> tuple[int, int]:
    if c > MAX_C:
        raise ValueError(f"row norm: {c} channels exceed the fused kernel's limit of {MAX_C}; "
                         f"use model.glue_kernel=reference")
    block = triton.next_power_of_2(c)
    return block, min(max(block // 256, 1), 8)


def row_norm_forward_triton(x: torch.Tensor, r: torch.Tensor | None, weight: torch.Tensor | None,
                            bias: torch.Tensor | None, pe: torch.Tensor | None, eps: float, clamp: bool
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, y, mean, rstd): s = x + r (empty when r is None), y the normalised s (or x);
    mean and rstd (rows,) fp32."""
    c = x.shape[-1]
    block, warps = _block(c)
    x = x.contiguous()
    rows = x.numel() // max(c, 1)
    s = torch.empty_like(x) if r is not None else x.new_empty(0)
    y = torch.empty_like(x)
    mean = torch.empty(rows, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    t = pe.shape[0] if pe is not None else 1
    if rows:
        _fwd_kernel[(rows,)](x, r.contiguous() if r is not None else x, weight if weight is not None else x,
                             bias if bias is not None else x, pe.contiguous() if pe is not None else x,
                             s if r is not None else x, y, mean, rstd, c, t, eps,
                             HAS_R=r is not None, HAS_W=weight is not None, HAS_B=bias is not None,
                             HAS_PE=pe is not None, CLAMP=clamp, BLOCK=block, num_warps=warps)
    return s, y, mean, rstd


def _programs(rows: int, device: torch.device) -> int:
    if device.type == "cuda":
        return max(1, min(rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(rows, 16))


def row_norm_backward_triton(dy: torch.Tensor, ds: torch.Tensor | None, s: torch.Tensor, weight: torch.Tensor | None,
                             mean: torch.Tensor, rstd: torch.Tensor, eps: float, clamp: bool, need_wb: bool
                             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dweight, dbias): dx = ds + d(norm)/ds; dweight and dbias (fp32) when ``need_wb``."""
    c = s.shape[-1]
    block, warps = _block(c)
    s, dy = s.contiguous(), dy.contiguous()
    rows = s.numel() // max(c, 1)
    dx = torch.empty_like(s)
    programs = _programs(rows, s.device)
    rpp = triton.cdiv(rows, programs)
    programs = triton.cdiv(rows, rpp) if rows else 1
    dw = torch.zeros((programs, c), device=s.device, dtype=torch.float32) if need_wb else mean
    db = torch.zeros_like(dw) if need_wb else mean
    if rows:
        _bwd_kernel[(programs,)](dy, ds.contiguous() if ds is not None else dy, s, weight if weight is not None else s,
                                 mean, rstd, dx, dw, db, rows, c, eps, rpp, HAS_DS=ds is not None,
                                 HAS_W=weight is not None, CLAMP=clamp, NEED_WB=need_wb, BLOCK=block, num_warps=warps)
    if not need_wb:
        return dx, None, None
    return dx, dw.sum(0), db.sum(0)
