"""Environment encoders E_a, E_v and the pool-and-normalise step (METHOD.md, "Added modules" 1-2).

Input: the noisy latent concatenated on channels with its latest clean estimate,
[z_m ; x0_hat_m]; conditioned on the encoder's own timestep (not on text). Output: pooled
features p_m (B, C_ctx, T_m), each channel divided by its L2 norm over time.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps

from svgen.models.cmcpe import Attention, _groups


class ResBlock(nn.Module):
    """GN-SiLU-conv, + timestep embedding, GN-SiLU-conv, residual."""

    def __init__(self, channels: int, temb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.temb = nn.Linear(temb_dim, channels)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.silu(self.norm1(x)))
        y = y + self.temb(F.silu(temb))[:, :, None, None]
        y = self.conv2(F.silu(self.norm2(y)))
        return x + y


class EnvironmentEncoder(nn.Module):
    """conv3x3 -> ResBlock -> stride-2 down -> ResBlock -> GN-SiLU-conv to context width.

    Audio: input (B, 2C, T, F), time on axis 2. Video: input (B, 2C, T, H, W); the conv net runs
    per frame, followed by a light temporal attention over the pooled per-frame features.
    """

    def __init__(self, in_channels: int, channels: int, context_dim: int, video: bool, temporal_heads: int = 8):
        super().__init__()
        self.video = video
        temb_dim = 4 * channels
        self.time_proj = Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(channels, temb_dim)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.res1 = ResBlock(channels, temb_dim)
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.res2 = ResBlock(channels, temb_dim)
        self.norm_out = nn.GroupNorm(_groups(channels), channels)
        self.conv_out = nn.Conv2d(channels, context_dim, 3, padding=1)
        if video:
            heads = temporal_heads if context_dim % temporal_heads == 0 else 1
            self.temporal_norm = nn.LayerNorm(context_dim)
            self.temporal_attn = Attention(context_dim, heads)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Returns pooled, normalised features p (B, C_ctx, T)."""
        b = x.shape[0]
        temb = self.time_embed(self.time_proj(timestep.reshape(-1).expand(b)).to(x.dtype))
        if self.video:
            t = x.shape[2]
            x = x.permute(0, 2, 1, 3, 4).reshape(b * t, x.shape[1], *x.shape[3:])
            temb = temb.repeat_interleave(t, dim=0)
        y = self.res1(self.conv_in(x), temb)
        y = self.res2(self.down(y), temb)
        y = self.conv_out(F.silu(self.norm_out(y)))
        if self.video:
            p = y.mean(dim=(2, 3)).reshape(b, t, -1)                       # pool space, (B, T, C)
            p = p + self.temporal_attn(self.temporal_norm(p))
            p = p.transpose(1, 2)
        else:
            p = y.mean(dim=3)                                              # pool frequency, (B, C, T')
        return normalize_over_time(p)


def normalize_over_time(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Divide each channel of (B, C, T) by its L2 norm over time (METHOD.md step 2)."""
    return p / p.norm(dim=-1, keepdim=True).clamp_min(eps)
