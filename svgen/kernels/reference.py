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
