"""Environment encoders E_a, E_v and the pool-and-normalise step (docs/method.md, "Added modules" 1-2).

Input: the noisy latent concatenated on channels with its latest clean estimate,
[z_m ; x0_hat_m]. Widths follow the base UNet's first width m, as in the reference:

    conv3x3 -> m/2, ResBlock -> 2m, [video: spatio-temporal block], stride-2 conv,
    ResBlock -> 4m, [video: spatio-temporal block], GN-SiLU-conv3x3 -> C_ctx (1280)

Each ResBlock's output conv starts at zero (the block starts as its skip path). The timestep
embedding is the frozen base UNet's own, evaluated at the encoder's timestep by the caller (the
joint model), so no embedding is trained here. Output: pooled features p_m (B, C_ctx, T_m), each
channel divided by its L2 norm over time.

The video path runs the convolutions per frame; its spatio-temporal blocks are the only place
where each modality's timing is encoded before it crosses over: per-pixel attention along time
with a learned continuous relative-position bias and a frame-time embedding, a token-shift GEGLU
feed-forward and a frame-shift ResBlock. At the real widths (audio m = 192, video m = 320) the
encoders have 21,037,472 and 100,299,695 parameters, as the reference's (tests/test_count.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from svgen.kernels import gain_norm, geglu_time_shift, group_norm_silu
from svgen.models.cmcpe import _groups


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class EnvResBlock(nn.Module):
    """GN-SiLU-conv3x3 (in -> out), + Linear(SiLU(temb)), GN-SiLU-zero conv3x3; skip conv1x1
    when the width changes."""

    glue_kernel: str = "reference"
    """Implementation of GroupNorm + SiLU (svgen.kernels.group_norm_silu; set by fuse_glue)."""

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(group_norm_silu(x, self.norm1, kernel=self.glue_kernel))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(group_norm_silu(h, self.norm2, kernel=self.glue_kernel))
        return self.skip(x) + h


def _norm_eps(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-3


class GainNorm(nn.Module):
    """Layer norm over ``dim`` with a gain and no bias (eps 1e-5 in fp32, 1e-3 in half types)."""

    glue_kernel: str = "reference"
    """Implementation (svgen.kernels.gain_norm; set by models.fusion.fuse_glue): 'triton' is one
    fused operator over the last dim."""

    def __init__(self, channels: int, dim: int = -1):
        super().__init__()
        self.dim = dim
        self.g = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gain_norm(x, self.g, eps=_norm_eps(x.dtype), dim=self.dim, kernel=self.glue_kernel)


class TimeNorm(nn.Module):
    """The reference's norm of the temporal attention's tokens (N, T, C): each channel of each
    pixel standardised across the frames (mean and variance over dim 1, time), then scaled by a
    gain of shape (C,); eps 1e-5 in fp32, 1e-3 in half types. (The code the reference copied
    wrote this norm for channel-first tensors; applied to time-major tokens it normalises over
    time. Its upstream fixed that to a channel norm: ``model.encoder.temporal_norm: channel``.)"""

    def __init__(self, channels: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * (var.clamp(min=_norm_eps(x.dtype)).rsqrt() * self.g)


class RelativePositionBias(nn.Module):
    """A per-head additive attention bias from an MLP over the signed log distance between frames
    (continuous position bias, arXiv 2111.09883): SiLU MLP of ``layers`` hidden layers."""

    def __init__(self, hidden: int, heads: int, layers: int = 2):
        super().__init__()
        mlp: list[nn.Module] = [nn.Linear(1, hidden), nn.SiLU()]
        for _ in range(layers - 1):
            mlp += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*mlp, nn.Linear(hidden, heads))

    def forward(self, frames: int) -> torch.Tensor:
        """(heads, frames, frames)."""
        w = self.net[0].weight
        pos = torch.arange(frames, device=w.device, dtype=torch.float32)
        rel = pos[:, None] - pos[None, :]
        rel = torch.sign(rel) * torch.log(rel.abs() + 1)
        return rearrange(self.net(rel[..., None].to(w.dtype)), "i j h -> h i j")


def frame_time_embedding(frames: int, fps: float, dim: int, *, device, dtype) -> torch.Tensor:
    """(frames, dim) sinusoidal embedding of each frame's time k / fps in seconds (sin, cos)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    t = torch.arange(frames, device=device, dtype=torch.float32) / fps
    args = t[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    return F.pad(emb, (0, dim - emb.shape[-1])).to(dtype)


class TemporalAttention(nn.Module):
    """Self-attention along time at each pixel: tokens (N, T, C) plus the frame-time embedding,
    a gain-only norm (``norm`` 'time': over the frames, as the reference; 'channel': over the
    channels), ``heads`` heads of width C/4, relative-position bias, zero-init output."""

    def __init__(self, dim: int, heads: int, fps: float, norm: str = "time"):
        super().__init__()
        self.heads, self.fps = heads, fps
        inner = heads * max(dim // 4, 1)
        if norm not in ("time", "channel"):
            raise ValueError(f"temporal norm must be 'time' or 'channel', got {norm!r}")
        self.norm = TimeNorm(dim) if norm == "time" else GainNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = _zero(nn.Linear(inner, dim, bias=False))
        self.rel_pos = RelativePositionBias(max(dim // 2, 1), heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        x = x + frame_time_embedding(t, self.fps, c, device=x.device, dtype=x.dtype)
        x = self.norm(x)
        q, k, v = (rearrange(y, "n t (h d) -> n h t d", h=self.heads) for y in (self.to_q(x), *self.to_kv(x).chunk(2, -1)))
        bias = self.rel_pos(t).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.to_out(rearrange(out, "n h t d -> n t (h d)"))


class TokenShiftFeedForward(nn.Module):
    """GEGLU feed-forward (inner width 8/3 x C) over channels whose hidden half-channels are
    shifted one frame forward in time, then channel norm (gain only) and projection."""

    glue_kernel: str = "reference"
    """Implementation of h * GELU(gate) and the token shift (svgen.kernels.geglu_time_shift; set by
    models.fusion.fuse_glue)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = int(dim * mult * 2 / 3)
        self.proj_in = nn.Linear(dim, 2 * inner, bias=False)
        self.norm = GainNorm(inner)
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H, W, C) -> same shape."""
        # The second half of the channels moves one frame forward in time (frame k gets frame
        # k-1, zeros first): in GEGLU's own pass with the fused kernel, else in place on its
        # product (one copy of that half, where padding and concatenating made two passes).
        h = geglu_time_shift(self.proj_in(x), kernel=self.glue_kernel)
        return self.proj_out(self.norm(h))


def frame_shift(x: torch.Tensor, groups: int = 8) -> torch.Tensor:
    """(B, C, T, H, W): channel group i (of ``groups``) delayed by i frames, zeros shifted in."""
    parts = list(torch.tensor_split(x, groups, dim=1))
    for i in range(1, len(parts)):
        p = parts[i]
        parts[i] = torch.cat([torch.zeros_like(p[:, :, :i]), p[:, :, :-i]], dim=2) if i < p.shape[2] else torch.zeros_like(p)
    return torch.cat(parts, dim=1)


class SpatioTemporalBlock(nn.Module):
    """Video only, after each encoder ResBlock: temporal attention, token-shift feed-forward and a
    frame-shift ResBlock (GN-SiLU-zero conv3x3 per frame, then channel groups shifted in time)."""

    glue_kernel: str = "reference"
    """Implementation of GroupNorm + SiLU (svgen.kernels.group_norm_silu; set by fuse_glue)."""

    def __init__(self, dim: int, heads: int, fps: float, temporal_norm: str = "time"):
        super().__init__()
        self.attn = TemporalAttention(dim, heads, fps, temporal_norm)
        self.ff = TokenShiftFeedForward(dim)
        self.shift_norm = nn.GroupNorm(_groups(dim), dim)
        self.shift_conv = _zero(nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) -> same shape."""
        b, c, t, hh, ww = x.shape
        seq = rearrange(x, "b c t h w -> (b h w) t c")
        seq = seq + self.attn(seq)
        y = rearrange(seq, "(b h w) t c -> b t h w c", b=b, h=hh, w=ww)
        y = y + self.ff(y)
        x = rearrange(y, "b t h w c -> b c t h w")
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        h = self.shift_conv(group_norm_silu(frames, self.shift_norm, kernel=self.glue_kernel))
        return x + frame_shift(rearrange(h, "(b t) c h w -> b c t h w", b=b))


class EnvironmentEncoder(nn.Module):
    """Audio: input (B, 2C, T, F), time on axis 2. Video: input (B, 2C, T, H, W), convolutions per
    frame (downsampling space only, all frames kept) and spatio-temporal blocks across frames."""

    glue_kernel: str = "reference"
    """Implementation of GroupNorm + SiLU (svgen.kernels.group_norm_silu; set by fuse_glue)."""

    def __init__(self, in_channels: int, base_width: int, context_dim: int, temb_dim: int, video: bool,
                 fps: float = 8.0, temporal_heads: int = 8, temporal_norm: str = "time"):
        super().__init__()
        m = base_width
        self.video = video
        self.conv_in = nn.Conv2d(in_channels, max(m // 2, 1), 3, padding=1)
        self.res1 = EnvResBlock(max(m // 2, 1), 2 * m, temb_dim)
        self.down = nn.Conv2d(2 * m, 2 * m, 3, stride=2, padding=1)
        self.res2 = EnvResBlock(2 * m, 4 * m, temb_dim)
        self.norm_out = nn.GroupNorm(_groups(4 * m), 4 * m)
        self.conv_out = nn.Conv2d(4 * m, context_dim, 3, padding=1)
        if video:
            self.st1 = SpatioTemporalBlock(2 * m, temporal_heads, fps, temporal_norm)
            self.st2 = SpatioTemporalBlock(4 * m, temporal_heads, fps, temporal_norm)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``temb``: (B, D) the frozen base UNet's timestep embedding at the encoder's timestep.
        Returns pooled, normalised features p (B, C_ctx, T)."""
        temb = temb.to(self.conv_in.weight.dtype)
        if not self.video:
            y = self.res2(self.down(self.res1(self.conv_in(x), temb)), temb)
            y = self.conv_out(group_norm_silu(y, self.norm_out, kernel=self.glue_kernel))
            return normalize_over_time(y.mean(dim=3))                     # pool frequency: (B, C, T')
        b, t = x.shape[0], x.shape[2]
        per_frame = lambda y: rearrange(y, "b c t h w -> (b t) c h w")    # noqa: E731
        per_clip = lambda y: rearrange(y, "(b t) c h w -> b c t h w", b=b)  # noqa: E731
        temb = temb.repeat_interleave(t, dim=0)
        y = self.st1(per_clip(self.res1(self.conv_in(per_frame(x)), temb)))
        y = self.st2(per_clip(self.res2(self.down(per_frame(y)), temb)))
        y = self.conv_out(group_norm_silu(per_frame(y), self.norm_out, kernel=self.glue_kernel))
        return normalize_over_time(per_clip(y).mean(dim=(3, 4)))         # pool space: (B, C, T)


def normalize_over_time(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Divide each channel of (B, C, T) by its L2 norm over time (docs/method.md, "Added modules" 2)."""
    return p / p.norm(dim=-1, keepdim=True).clamp_min(eps)
