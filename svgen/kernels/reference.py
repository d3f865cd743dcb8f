"""Plain PyTorch reference of the fused CMC-PE op (the maths every other implementation matches)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def time_index(t_self: int, t_other: int, device: torch.device | None = None) -> torch.Tensor:
    """Nearest-neighbour source index along time for each of t_self positions.

    Same convention as ``F.interpolate(mode='nearest')``: src = floor(i * t_other / t_self).
    """
    return (torch.arange(t_self, device=device) * t_other) // t_self


def resample_time(e: torch.Tensor, t_self: int, mode: str = "nearest") -> torch.Tensor:
    """(B, T_other, C) -> (B, t_self, C) along time."""
    if mode == "nearest":
        return e[:, time_index(t_self, e.shape[1], e.device)]
    if mode == "linear":
        return F.interpolate(e.transpose(1, 2), size=t_self, mode="linear",
                             align_corners=False).transpose(1, 2)
    raise ValueError(f"unknown resample mode {mode!r}; use 'nearest' or 'linear'")


def norm_add_embedding_reference(x: torch.Tensor, emb: torch.Tensor, weight: torch.Tensor,
                                 bias: torch.Tensor, *, eps: float = 1e-5, mode: str = "nearest"
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """u = LayerNorm(x) over C;  a = u + resample(emb) broadcast over S.

    x: (B, T, S, C) hidden tokens; emb: (B, T_other, C). Returns (u, a), both like x.
    Computed in fp32 and cast back, as the fused kernels accumulate in fp32.
    """
    u = F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps=eps)
    e = resample_time(emb.float(), x.shape[1], mode)
    a = u + e[:, :, None, :]
    return u.to(x.dtype), a.to(x.dtype)


def geglu_reference(x: torch.Tensor) -> torch.Tensor:
    """GEGLU of a projection: x (..., 2I) = [h ; gate] -> h * GELU(gate) (exact, erf), (..., I);
    as diffusers' GEGLU after its Linear."""
    h, gate = x.chunk(2, dim=-1)
    return h * F.gelu(gate)


def geglu_backward_reference(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d(loss)/dx of ``geglu_reference`` given d(loss)/d(output), computed in fp32 and cast back:
    [grad * GELU(gate) ; grad * h * GELU'(gate)], GELU'(g) = Phi(g) + g phi(g)."""
    h, gate = x.float().chunk(2, dim=-1)
    g = grad.float()
    cdf = 0.5 * (1.0 + torch.erf(gate * 0.7071067811865476))
    pdf = torch.exp(-0.5 * gate * gate) * 0.3989422804014327
    return torch.cat([g * gate * cdf, g * h * (cdf + gate * pdf)], dim=-1).to(x.dtype)


def time_shift_reference(y: torch.Tensor) -> torch.Tensor:
    """y (B, T, ..., C) with its last C // 2 channels moved one frame forward in time (frame k gets
    frame k-1, zeros in frame 0): the video encoder's token shift."""
    half = y.shape[-1] - y.shape[-1] // 2
    out = y.clone()
    out[:, 1:, ..., half:] = y[:, :-1, ..., half:]
    out[:, :1, ..., half:] = 0
    return out


def time_unshift_reference(g: torch.Tensor) -> torch.Tensor:
    """The gradient through ``time_shift_reference``: the last C // 2 channels from the next frame."""
    half = g.shape[-1] - g.shape[-1] // 2
    out = g.clone()
    out[:, :-1, ..., half:] = g[:, 1:, ..., half:]
    out[:, -1:, ..., half:] = 0
    return out


def group_norm_silu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, groups: int,
                              eps: float = 1e-5) -> torch.Tensor:
    """SiLU(GroupNorm(x)) over (N, C, ...), statistics in fp32 as the fused kernel keeps them."""
    return F.silu(F.group_norm(x.float(), groups, weight.float(), bias.float(), eps)).to(x.dtype)


def group_norm_silu_backward_reference(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                                       groups: int, eps: float = 1e-5
                                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) of ``group_norm_silu_reference``, in fp32 and cast back."""
    n, c = x.shape[:2]
    xg = x.float().reshape(n, groups, -1)
    var, mean = torch.var_mean(xg, dim=-1, unbiased=False, keepdim=True)
    rstd = (var + eps).rsqrt()
    xhat = ((xg - mean) * rstd).reshape(n, c, -1)
    z = xhat * weight.float()[:, None] + bias.float()[:, None]
    s = torch.sigmoid(z)
    dz = dy.float().reshape(n, c, -1) * s * (1 + z * (1 - s))
    dweight, dbias = (dz * xhat).sum(dim=(0, 2)), dz.sum(dim=(0, 2))
    dxhat = (dz * weight.float()[:, None]).reshape(n, groups, -1)
    xh = xhat.reshape(n, groups, -1)
    dx = rstd * (dxhat - dxhat.mean(-1, keepdim=True) - xh * (dxhat * xh).mean(-1, keepdim=True))
    return dx.reshape(x.shape).to(x.dtype), dweight.to(weight.dtype), dbias.to(bias.dtype)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _row_norm_core(s: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                   clamp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised s in fp32 (fp64 for fp64) with weight and bias applied, mean, rstd) over the last dim."""
    sf = _wide(s)
    var, mean = torch.var_mean(sf, dim=-1, unbiased=False, keepdim=True)
    rstd = (var.clamp(min=eps) if clamp else var + eps).rsqrt()
    y = (sf - mean) * rstd
    if weight is not None:
        y = y * _wide(weight)
    if bias is not None:
        y = y + _wide(bias)
    return y, mean, rstd


def row_norm_reference(x: torch.Tensor, r: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       pe: torch.Tensor | None, *, eps: float, clamp: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, y, mean, rstd): s = x + r in x's dtype (None without r), y = norm(s) * weight + bias,
    rounded to x's dtype, plus pe (T, C) broadcast over the rows' time axis (-2); the norm over the
    last dim, layer norm's rsqrt(var + eps) or with ``clamp`` rsqrt(max(var, eps)); fp32 maths.
    mean and rstd (rows,) fp32."""
    s = x + r if r is not None else None
    src = s if s is not None else x
    y, mean, rstd = _row_norm_core(src, weight, bias, eps, clamp)
    y = y.to(x.dtype)
    if pe is not None:
        y = y + pe
    return s, y, mean.reshape(-1).float(), rstd.reshape(-1).float()


def row_norm_backward_reference(dy: torch.Tensor, ds: torch.Tensor | None, s: torch.Tensor, weight: torch.Tensor | None,
                                bias: torch.Tensor | None, *, eps: float, clamp: bool = False
                                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(ds + d(loss)/ds through the norm, dweight, dbias) of ``row_norm_reference`` given
    d(loss)/dy (pe takes no gradient): layer norm's backward, without the variance's term in
    the rows where ``clamp`` held it at eps."""
    sf, g = _wide(s), _wide(dy)
    var, mean = torch.var_mean(sf, dim=-1, unbiased=False, keepdim=True)
    rstd = (var.clamp(min=eps) if clamp else var + eps).rsqrt()
    xhat = (sf - mean) * rstd
    gw = g * _wide(weight) if weight is not None else g
    b = (gw * xhat).mean(-1, keepdim=True)
    if clamp:
        b = torch.where(var < eps, torch.zeros_like(b), b)
    dx = rstd * (gw - gw.mean(-1, keepdim=True) - xhat * b)
    if ds is not None:
        dx = dx + _wide(ds)
    rows = tuple(range(s.ndim - 1))
    dw = (g * xhat).sum(rows).to(weight.dtype) if weight is not None else None
    db = g.sum(rows).to(bias.dtype) if bias is not None else None
    return dx.to(s.dtype), dw, db
