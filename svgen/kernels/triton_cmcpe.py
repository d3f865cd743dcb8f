"""Fused CMC-PE hot path in Triton: LayerNorm + time-resampled broadcast add, forward and backward.

    u = LayerNorm(x) over C,   a = u + e~,   e~[b, t, s, :] = resample_t(emb)[b, t, :]

x is read once and u, a written once; the embedding is read once per program and never
broadcast in memory. One program handles one (b, t) pair and one chunk of its S positions
(chunks keep the GPU full at batch 1), so the backward reduces d(emb), d(weight), d(bias) over
its rows without atomics: it writes per-program partial sums that small torch reductions finish
(deterministic).

Accumulation is fp32 whatever the input dtype (bf16, fp16, fp32). Inputs may be non-contiguous:
the kernels take explicit strides for x and emb. Runs on CUDA, and on CPU under
TRITON_INTERPRET=1 (how the tests check it against ``reference.py``).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from svgen.kernels.reference import time_index

_MODES = {"nearest": 0, "linear": 1}


@triton.jit
def _source(t, T, T_O, MODE: tl.constexpr):
    """Source indices and weight of the time resampling for output step t."""
    if MODE == 0:
        i0 = (t * T_O) // T
        return i0, i0, 0.0
    else:
        # F.interpolate(mode='linear', align_corners=False)
        src = (t + 0.5) * T_O / T - 0.5
        src = tl.maximum(src, 0.0)
        i0 = src.to(tl.int32)
        i1 = tl.minimum(i0 + 1, T_O - 1)
        return i0, i1, src - i0


@triton.jit
def _fwd_kernel(x_ptr, emb_ptr, w_ptr, b_ptr, u_ptr, a_ptr, mean_ptr, rstd_ptr,
                T, S, C, T_O, ROWS,
                sxb, sxt, sxs, sxc, seb, set_, sec,
                eps, MODE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)                    # one (b, t) pair
    s_begin = tl.program_id(1) * ROWS         # and one chunk of its S positions
    s_end = tl.minimum(s_begin + ROWS, S)
    b = pid // T
    t = pid % T
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    i0, i1, frac = _source(t, T, T_O, MODE)
    e0 = tl.load(emb_ptr + b * seb + i0 * set_ + cols * sec, mask=cmask, other=0.0).to(tl.float32)
    e1 = tl.load(emb_ptr + b * seb + i1 * set_ + cols * sec, mask=cmask, other=0.0).to(tl.float32)
    e = e0 * (1.0 - frac) + e1 * frac
    row0 = pid * S                            # rows of this (b, t) in the contiguous outputs
    for s0 in range(s_begin, s_end, BLOCK_S):
        srow = s0 + tl.arange(0, BLOCK_S)
        smask = srow < s_end
        m2 = smask[:, None] & cmask[None, :]
        xp = x_ptr + b * sxb + t * sxt + srow[:, None] * sxs + cols[None, :] * sxc
        x = tl.load(xp, mask=m2, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(m2, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / C
        rstd = 1.0 / tl.sqrt(var + eps)
        u = xc * rstd[:, None] * w[None, :] + bias[None, :]
        a = u + e[None, :]
        op = (row0 + srow)[:, None] * C + cols[None, :]
        tl.store(u_ptr + op, u.to(u_ptr.dtype.element_ty), mask=m2)
        tl.store(a_ptr + op, a.to(a_ptr.dtype.element_ty), mask=m2)
        tl.store(mean_ptr + row0 + srow, mean, mask=smask)
        tl.store(rstd_ptr + row0 + srow, rstd, mask=smask)


@triton.jit
def _bwd_kernel(x_ptr, w_ptr, du_ptr, da_ptr, mean_ptr, rstd_ptr, dx_ptr, de_ptr, dw_ptr, db_ptr,
                T, S, C, ROWS,
                sxb, sxt, sxs, sxc, sgb, sgt, sgs, sgc, shb, sht, shs, shc,
                BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    s_begin = chunk * ROWS
    s_end = tl.minimum(s_begin + ROWS, S)
    part = pid * tl.num_programs(1) + chunk  # row of this program's partial sums
    b = pid // T
    t = pid % T
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    acc_e = tl.zeros([BLOCK_C], dtype=tl.float32)      # sum over S of da   -> d(emb) at (b, t)
    acc_w = tl.zeros([BLOCK_C], dtype=tl.float32)      # sum over S of g * xhat
    acc_b = tl.zeros([BLOCK_C], dtype=tl.float32)      # sum over S of g
    row0 = pid * S
    for s0 in range(s_begin, s_end, BLOCK_S):
        srow = s0 + tl.arange(0, BLOCK_S)
        smask = srow < s_end
        m2 = smask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + b * sxb + t * sxt + srow[:, None] * sxs + cols[None, :] * sxc,
                    mask=m2, other=0.0).to(tl.float32)
        du = tl.load(du_ptr + b * sgb + t * sgt + srow[:, None] * sgs + cols[None, :] * sgc,
                     mask=m2, other=0.0).to(tl.float32)
        da = tl.load(da_ptr + b * shb + t * sht + srow[:, None] * shs + cols[None, :] * shc,
                     mask=m2, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + row0 + srow, mask=smask, other=0.0)
        rstd = tl.load(rstd_ptr + row0 + srow, mask=smask, other=0.0)
        xhat = tl.where(m2, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = du + da                                   # a = u + e~, so u receives both gradients
        acc_e += tl.sum(da, axis=0)
        acc_w += tl.sum(g * xhat, axis=0)
        acc_b += tl.sum(g, axis=0)
        gx = g * w[None, :]
        c1 = tl.sum(gx * xhat, axis=1) / C
        c2 = tl.sum(gx, axis=1) / C
        dx = (gx - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(dx_ptr + (row0 + srow)[:, None] * C + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m2)
    tl.store(de_ptr + part * C + cols, acc_e, mask=cmask)
    tl.store(dw_ptr + part * C + cols, acc_w, mask=cmask)
    tl.store(db_ptr + part * C + cols, acc_b, mask=cmask)


# Launch shape. A tile holds BLOCK_S rows x next_pow2(C) channels (about `*_tile` fp32 values in
# registers). The S positions of each (b, t) are split into chunks so that about `*_programs`
# programs run (None: `*_waves` per SM): at batch 1 the B*T pairs alone (e.g. 32 frames) would
# leave most SMs idle. The backward writes one partial sum per program for d(emb), d(weight),
# d(bias), so it splits no more than needed: on short S (audio) those sums cost real traffic.
LAUNCH = {"fwd_tile": 8192, "fwd_warps": 8, "fwd_programs": None, "fwd_waves": 16,
          "bwd_tile": 4096, "bwd_warps": 8, "bwd_programs": None, "bwd_waves": 4}


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _target_programs(device: torch.device, which: str) -> int:
    return LAUNCH[f"{which}_programs"] or LAUNCH[f"{which}_waves"] * _sm_count(device)


def _block_s(S: int, C: int, tile: int = 8192) -> int:
    return max(1, min(triton.next_power_of_2(S), tile // triton.next_power_of_2(C)))


def _chunks(BT: int, S: int, block_s: int, programs: int) -> tuple[int, int]:
    """(rows per program, a multiple of block_s; number of chunks of S)."""
    tiles = triton.cdiv(S, block_s)
    n = max(1, min(tiles, triton.cdiv(programs, BT)))
    rows = triton.cdiv(tiles, n) * block_s
    return rows, triton.cdiv(S, rows)


def _check(x: torch.Tensor, emb: torch.Tensor, weight: torch.Tensor, mode: str) -> None:
    if x.ndim != 4 or emb.ndim != 3:
        raise ValueError(f"expected x (B, T, S, C) and emb (B, T_other, C), got {tuple(x.shape)} and {tuple(emb.shape)}")
    if emb.shape[0] != x.shape[0] or emb.shape[2] != x.shape[3] or weight.shape != (x.shape[3],):
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, emb {tuple(emb.shape)}, weight {tuple(weight.shape)}")
    if mode not in _MODES:
        raise ValueError(f"unknown resample mode {mode!r}; use 'nearest' or 'linear'")
    if x.shape[3] > 16384:
        raise ValueError(f"channels {x.shape[3]} exceed the kernel's single-block limit of 16384")


class _NormAddEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, emb, weight, bias, eps, mode):
        _check(x, emb, weight, mode)
        B, T, S, C = x.shape
        T_O = emb.shape[1]
        u = torch.empty((B, T, S, C), device=x.device, dtype=x.dtype)
        a = torch.empty_like(u)
        mean = torch.empty(B * T * S, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        BLOCK_C = triton.next_power_of_2(C)
        block_s = _block_s(S, C, LAUNCH["fwd_tile"])
        rows, n = _chunks(B * T, S, block_s, _target_programs(x.device, "fwd"))
        _fwd_kernel[(B * T, n)](x, emb, weight, bias, u, a, mean, rstd, T, S, C, T_O, rows,
                                *x.stride(), *emb.stride(), eps,
                                MODE=_MODES[mode], BLOCK_S=block_s, BLOCK_C=BLOCK_C,
                                num_warps=LAUNCH["fwd_warps"])
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.mode, ctx.t_other, ctx.emb_dtype = mode, T_O, emb.dtype
        return u, a

    @staticmethod
    def backward(ctx, du, da):
        x, weight, mean, rstd = ctx.saved_tensors
        B, T, S, C = x.shape
        du = torch.zeros_like(x) if du is None else du
        da = torch.zeros_like(x) if da is None else da
        dx = torch.empty((B, T, S, C), device=x.device, dtype=x.dtype)
        block_s = _block_s(S, C, LAUNCH["bwd_tile"])
        rows, n = _chunks(B * T, S, block_s, _target_programs(x.device, "bwd"))
        de_t = torch.empty((B * T * n, C), device=x.device, dtype=torch.float32)
        dw = torch.empty_like(de_t)
        db = torch.empty_like(de_t)
        _bwd_kernel[(B * T, n)](x, weight, du, da, mean, rstd, dx, de_t, dw, db, T, S, C, rows,
                                *x.stride(), *du.stride(), *da.stride(),
                                BLOCK_S=block_s, BLOCK_C=triton.next_power_of_2(C),
                                num_warps=LAUNCH["bwd_warps"])
        de_t = de_t.reshape(B, T, n, C).sum(2) if n > 1 else de_t.reshape(B, T, C)
        d_emb = _scatter_time(de_t, ctx.t_other, ctx.mode).to(ctx.emb_dtype)
        return dx, d_emb, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype), None, None


def _scatter_time(de_t: torch.Tensor, t_other: int, mode: str) -> torch.Tensor:
    """Adjoint of the time resampling on the small (B, T, C) per-step sums -> (B, T_other, C)."""
    B, T, C = de_t.shape
    out = de_t.new_zeros(B, t_other, C)
    if mode == "nearest":
        idx = time_index(T, t_other, de_t.device)
        return out.index_add_(1, idx, de_t)
    t = torch.arange(T, device=de_t.device, dtype=torch.float32)
    src = ((t + 0.5) * t_other / T - 0.5).clamp_min(0.0)
    i0 = src.to(torch.long)
    i1 = (i0 + 1).clamp_max(t_other - 1)
    frac = (src - i0)[None, :, None]
    out.index_add_(1, i0, de_t * (1 - frac))
    return out.index_add_(1, i1, de_t * frac)


def norm_add_embedding_triton(x: torch.Tensor, emb: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                              eps: float = 1e-5, mode: str = "nearest") -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of ``reference.norm_add_embedding_reference`` (same signature)."""
    return _NormAddEmbedding.apply(x, emb, weight, bias, eps, mode)
