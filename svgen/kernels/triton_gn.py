"""Fused GroupNorm + SiLU in Triton, forward and backward (issue 23).

    y = SiLU(GroupNorm(x)),   x (N, C, L) contiguous, C split into G groups of C/G channels

Eager PyTorch writes the normalised tensor and reads it again for SiLU (and the backward reads
and writes it twice more); these kernels write y once forward and dx once backward. One program
per (sample, group): its channels are one contiguous run of (C/G) x L values. Statistics and
arithmetic in fp32 whatever the input dtype; the per-channel weight and bias gradients are
written per sample and summed by a small torch reduction (deterministic). Runs on CUDA, and on
CPU under TRITON_INTERPRET=1 (how the tests check it against ``reference.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, C, L, G, eps, BLOCK: tl.constexpr):
    pid = tl.program_id(0)                    # one (sample, group)
    n = pid // G
    g = pid % G
    cpg = C // G
    span = cpg * L
    base = (n.to(tl.int64) * C + g * cpg) * L
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, span, BLOCK):
        m = i + offs < span
        acc += tl.load(x_ptr + base + i + offs, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / span
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, span, BLOCK):
        m = i + offs < span
        d = tl.where(m, tl.load(x_ptr + base + i + offs, mask=m, other=0.0).to(tl.float32) - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / span + eps)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)
    for c in range(0, cpg):
        w = tl.load(w_ptr + g * cpg + c).to(tl.float32)
        b = tl.load(b_ptr + g * cpg + c).to(tl.float32)
        row = base + c * L
        for i in range(0, L, BLOCK):
            m = i + offs < L
            x = tl.load(x_ptr + row + i + offs, mask=m, other=0.0).to(tl.float32)
            z = (x - mean) * rstd * w + b
            tl.store(y_ptr + row + i + offs, (z / (1.0 + tl.exp(-z))).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _xhat_dz(x_ptr, dy_ptr, offs, m, mean, rstd, w, b):
    """The normalised input and d(loss)/d(pre-activation) z = xhat * w + b, 0 where masked."""
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
    xhat = (x - mean) * rstd
    z = xhat * w + b
    s = 1.0 / (1.0 + tl.exp(-z))
    return xhat, tl.where(m, dy * s * (1.0 + z * (1.0 - s)), 0.0)


@triton.jit
def _bwd_kernel(dy_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, C, L, G,
                BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    cpg = C // G
    span = cpg * L
    base = (n.to(tl.int64) * C + g * cpg) * L
    mean = tl.load(mean_ptr + pid)
    rstd = tl.load(rstd_ptr + pid)
    offs = tl.arange(0, BLOCK)
    sum_a = tl.zeros([BLOCK], dtype=tl.float32)   # sum of dxhat
    sum_b = tl.zeros([BLOCK], dtype=tl.float32)   # sum of dxhat * xhat
    for c in range(0, cpg):
        ch = g * cpg + c
        w = tl.load(w_ptr + ch).to(tl.float32)
        b = tl.load(b_ptr + ch).to(tl.float32)
        row = base + c * L
        acc_w = tl.zeros([BLOCK], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(0, L, BLOCK):
            m = i + offs < L
            xhat, dz = _xhat_dz(x_ptr, dy_ptr, row + i + offs, m, mean, rstd, w, b)
            acc_w += dz * xhat
            acc_b += dz
            sum_a += dz * w
            sum_b += dz * w * xhat
        tl.store(dw_ptr + n * C + ch, tl.sum(acc_w, axis=0))
        tl.store(db_ptr + n * C + ch, tl.sum(acc_b, axis=0))
    mean_a = tl.sum(sum_a, axis=0) / span
    mean_b = tl.sum(sum_b, axis=0) / span
    for c in range(0, cpg):
        ch = g * cpg + c
        w = tl.load(w_ptr + ch).to(tl.float32)
        b = tl.load(b_ptr + ch).to(tl.float32)
        row = base + c * L
        for i in range(0, L, BLOCK):
            m = i + offs < L
            xhat, dz = _xhat_dz(x_ptr, dy_ptr, row + i + offs, m, mean, rstd, w, b)
            dx = rstd * (dz * w - mean_a - xhat * mean_b)
            tl.store(dx_ptr + row + i + offs, dx.to(dx_ptr.dtype.element_ty), mask=m)


def _check(x: torch.Tensor, weight: torch.Tensor, groups: int) -> None:
    if x.ndim < 2 or x.shape[1] % groups or weight.shape != (x.shape[1],):
        raise ValueError(f"group_norm_silu: x {tuple(x.shape)} needs (N, C, ...) with C divisible by groups "
                         f"({groups}) and a weight of shape (C,), got {tuple(weight.shape)}")


def group_norm_silu_forward_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                                   eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd); mean and rstd (N * groups,) fp32 for the backward."""
    _check(x, weight, groups)
    x = x.contiguous()
    n, c = x.shape[:2]
    length = x[0, 0].numel()
    y = torch.empty_like(x)
    mean = torch.empty(n * groups, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if x.numel():
        _fwd_kernel[(n * groups,)](x, weight, bias, y, mean, rstd, c, length, groups, eps, BLOCK=BLOCK)
    return y, mean, rstd


def group_norm_silu_backward_triton(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                    mean: torch.Tensor, rstd: torch.Tensor, groups: int
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, dy = x.contiguous(), dy.contiguous()
    n, c = x.shape[:2]
    length = x[0, 0].numel()
    dx = torch.empty_like(x)
    dw = torch.zeros((n, c), device=x.device, dtype=torch.float32)
    db = torch.zeros_like(dw)
    if x.numel():
        _bwd_kernel[(n * groups,)](dy, x, weight, bias, mean, rstd, dx, dw, db, c, length, groups, BLOCK=BLOCK)
    return dx, dw.sum(0).to(weight.dtype), db.sum(0).to(bias.dtype)
