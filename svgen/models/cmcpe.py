"""Cross-modal blocks inserted into the UNets (docs/method.md, "Added modules" 3 and 4).

Both block kinds take a hidden state h in the common layout (B, C, T, S) and the *other*
modality's pooled, normalised features p (B, C_ctx, T_other), and return h + proj_out(u) with
proj_out zero-initialised, so an untrained block is the identity.

- :class:`CMCPEBlock`: the other modality enters as a positional encoding along time.
- :class:`CrossAttentionBlock`: the baseline; it cross-attends to one pooled token
  ('xattn_pooled', as the reference code), one token per time step ('xattn_seq'), or one token
  per time step with queries and keys rotated by their time in seconds ('xattn_timed', rotary
  positions: the attention logit then depends on the time difference, so the block can find
  *when* the other modality's events are, which plain cross-attention cannot).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from einops import rearrange

from svgen.kernels import norm_add_embedding


def _groups(channels: int, preferred: int = 32) -> int:
    g = min(preferred, channels)
    while channels % g:
        g -= 1
    return g


def heads_for(dim: int, head_dim: int) -> int:
    """Heads of width ``head_dim`` over ``dim`` channels (the reference: width 8, C/8 heads)."""
    if dim % head_dim:
        raise ValueError(f"attention width {dim} is not divisible by head_dim={head_dim}; "
                         "set model.cmcpe.head_dim to a divisor of every inserted block's width")
    return dim // head_dim


def rotary(x: torch.Tensor, seconds: torch.Tensor, wavelengths: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x`` (..., N, D) by angle 2 pi t / wavelength, with
    t = ``seconds`` (broadcast against x's leading dims and N) and one wavelength per pair."""
    angle = (2 * torch.pi) * seconds[..., None].float() / wavelengths.float()      # (..., N, D/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def time_wavelengths(pairs: int, shortest: float = 0.25, longest: float = 8.0) -> torch.Tensor:
    """Rotary wavelengths in seconds, geometric from ``shortest`` (two frames at 8 fps) to
    ``longest`` (twice a 4 s clip, so no two instants of a clip alias)."""
    if pairs == 1:
        return torch.tensor([longest])
    return longest * (shortest / longest) ** (torch.arange(pairs, dtype=torch.float64) / (pairs - 1))


def frame_seconds(frames: int, seconds: float, device=None) -> torch.Tensor:
    """The centre time (s) of each of ``frames`` equal slices of a ``seconds``-long clip."""
    return (torch.arange(frames, device=device, dtype=torch.float32) + 0.5) * (seconds / frames)


class Attention(nn.Module):
    """Multi-head attention over token sequences (B, N, C), optionally to a context (B, M, D).
    With ``q_seconds`` / ``k_seconds`` (times broadcast against (B, N) and (B, M)), queries and
    keys are rotated by their time (rotary positions in seconds)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, q_seconds: torch.Tensor | None = None,
                k_seconds: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads)
                   for t in (self.to_q(x), self.to_k(ctx), self.to_v(ctx)))
        if q_seconds is not None:
            waves = time_wavelengths(q.shape[-1] // 2).to(q.device)
            q = rotary(q, q_seconds.unsqueeze(1), waves)  # the head axis
            k = rotary(k, k_seconds.unsqueeze(1), waves)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(y, "b h n d -> b n (h d)"))


class _Layer(nn.Module):
    """Self-attention and GEGLU feed-forward sub-layers.

    ``renorm=False`` (pre-norm, the cross-attention baseline's transformer block):
    u + Attn(LN(u)); u + FF(LN(u)). ``renorm=True`` (the reference CMC-PE block): the residual
    stream itself is re-normalised before each sub-layer: u = LN(u); u + Attn(u); u = LN(u); u + FF(u).
    """

    def __init__(self, dim: int, heads: int, renorm: bool = False):
        super().__init__()
        self.renorm = renorm
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.ff = nn.LayerNorm(dim), FeedForward(dim, activation_fn="geglu")

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.renorm:
            u = self.norm1(u)
            u = u + self.attn(u)
            u = self.norm2(u)
            return u + self.ff(u)
        u = u + self.attn(self.norm1(u))
        return u + self.ff(self.norm2(u))


class _BlockBase(nn.Module):
    """Shared in/out projections: GN -> proj_in on the way in, zero-init proj_out on the way out.

    ``per_frame`` (video): attention runs within each time step over S positions;
    otherwise (audio) over all T*S positions. The input GroupNorm's statistics span the whole
    clip (all time steps together) for both, as the reference's.
    """

    def __init__(self, channels: int, per_frame: bool):
        super().__init__()
        self.per_frame = per_frame
        self.norm_in = nn.GroupNorm(_groups(channels), channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def _tokens_in(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C, T, S) -> proj_in(GN(h)) as tokens (B, T, S, C), GN over the whole clip."""
        return self.proj_in(rearrange(self.norm_in(h), "b c t s -> b t s c"))

    def _seq(self, u: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, S, C) -> attention sequences: (B*T, S, C) per frame or (B, T*S, C)."""
        b, t, s, c = u.shape
        return u.reshape(b * t, s, c) if self.per_frame else u.reshape(b, t * s, c)

    def _out(self, h: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        b, c, t, s = h.shape
        y = self.proj_out(seq).reshape(b, t, s, c).permute(0, 3, 1, 2)
        return h + y.to(h.dtype)


class CMCPEBlock(_BlockBase):
    """Cross-modal conditioning as positional encoding."""

    def __init__(self, channels: int, context_dim: int, *, head_dim: int = 8, depth: int = 1,
                 per_frame: bool = False, resample: str = "nearest", kernel: str = "auto"):
        super().__init__(channels, per_frame)
        heads = heads_for(channels, head_dim)
        self.resample, self.kernel = resample, kernel
        self.norm_u = nn.LayerNorm(channels)
        self.embed = FeedForward(context_dim, dim_out=channels, activation_fn="geglu")
        self.embed_norm = nn.GroupNorm(_groups(channels), channels, eps=1e-6)
        self.cond_attn = Attention(channels, heads)
        self.layers = nn.ModuleList(_Layer(channels, heads, renorm=True) for _ in range(depth))

    def forward(self, h: torch.Tensor, p_other: torch.Tensor) -> torch.Tensor:
        dtype = self.proj_in.weight.dtype
        x = self._tokens_in(h.to(dtype))
        e = self.embed(p_other.to(dtype).transpose(1, 2))               # (B, T_o, C)
        e = self.embed_norm(e.transpose(1, 2)).transpose(1, 2)
        # The hot path: u = LN(x), a = u + e resampled to T and broadcast over S, in one pass.
        u, a = norm_add_embedding(x, e, self.norm_u.weight, self.norm_u.bias, eps=self.norm_u.eps,
                                  mode=self.resample, kernel=self.kernel)
        b, t, s, c = u.shape
        seq = self._seq(u) + self.cond_attn(self._seq(a))
        for layer in self.layers:
            seq = layer(seq)
        return self._out(h, seq)


class CrossAttentionBlock(_BlockBase):
    """The cross-attention baseline: a transformer block attending to the other modality.

    ``context_norm``: LayerNorm on the context tokens before their key and value projections.
    The reference's baseline has none; its context (pooled features normalised to unit L2 norm
    over time, entries about 1/sqrt(T)) then gives keys so small that attention stays uniform,
    and at small scale the key and query projections got about 1/400 of CMC-PE's gradient
    (issue 20). CMC-PE puts its context through a GroupNorm (``embed_norm``); this is the same
    footing for the baseline. ``timed``: rotary time positions in seconds on queries and keys
    ('xattn_timed'); ``seconds``: the clip's length, which the positions span."""

    def __init__(self, channels: int, context_dim: int, *, head_dim: int = 8, depth: int = 1,
                 per_frame: bool = False, pooled: bool = True, context_norm: bool = False,
                 timed: bool = False, seconds: float = 4.0):
        super().__init__(channels, per_frame)
        heads = heads_for(channels, head_dim)
        if timed and (pooled or head_dim % 2):
            raise ValueError("timed cross-attention needs one context token per time step and an even head_dim "
                             "(rotary positions turn channel pairs)")
        self.pooled, self.timed, self.seconds = pooled, timed, seconds
        self.norm_u = nn.LayerNorm(channels)
        self.norm_x = nn.LayerNorm(channels)
        self.norm_ctx = nn.LayerNorm(context_dim) if context_norm else None
        self.cross = Attention(channels, heads, context_dim=context_dim)
        self.layers = nn.ModuleList(_Layer(channels, heads) for _ in range(max(depth, 1)))

    def forward(self, h: torch.Tensor, p_other: torch.Tensor) -> torch.Tensor:
        dtype = self.proj_in.weight.dtype
        u = self.norm_u(self._tokens_in(h.to(dtype)))
        b, t, s, c = u.shape
        ctx = p_other.to(dtype).transpose(1, 2)                          # (B, T_o, C_ctx)
        t_other = ctx.shape[1]
        if self.pooled:
            ctx = ctx.mean(dim=1, keepdim=True)
        if self.norm_ctx is not None:
            ctx = self.norm_ctx(ctx)
        if self.per_frame:
            ctx = ctx.repeat_interleave(t, dim=0)
        q_sec = k_sec = None
        if self.timed:
            own, other = frame_seconds(t, self.seconds, u.device), frame_seconds(t_other, self.seconds, u.device)
            # Per frame: one sequence per (clip, frame), all its queries at that frame's time.
            q_sec = own.repeat(b)[:, None] if self.per_frame else own.repeat_interleave(s)[None, :]
            k_sec = other[None, :]
        seq = self._seq(u)
        seq = self.layers[0].attn(self.layers[0].norm1(seq)) + seq
        seq = seq + self.cross(self.norm_x(seq), ctx, q_seconds=q_sec, k_seconds=k_sec)
        seq = seq + self.layers[0].ff(self.layers[0].norm2(seq))
        for layer in self.layers[1:]:
            seq = layer(seq)
        return self._out(h, seq)


def make_block(mode: str, channels: int, context_dim: int, *, head_dim: int, depth: int, per_frame: bool,
               resample: str = "nearest", kernel: str = "auto", context_norm: bool = False,
               seconds: float = 4.0) -> nn.Module:
    if mode == "cmcpe":
        return CMCPEBlock(channels, context_dim, head_dim=head_dim, depth=depth, per_frame=per_frame, resample=resample,
                          kernel=kernel)
    if mode in ("xattn_pooled", "xattn_seq", "xattn_timed"):
        return CrossAttentionBlock(channels, context_dim, head_dim=head_dim, depth=depth, per_frame=per_frame,
                                   pooled=mode == "xattn_pooled",
                                   context_norm=context_norm, timed=mode == "xattn_timed", seconds=seconds)
    raise ValueError(f"unknown cross-modal block mode {mode!r}")
