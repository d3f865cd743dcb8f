"""DeSync: the audio-visual offset that Synchformer predicts for a clip (the sync metric of
MMAudio's av-benchmark, JavisBench and MOVA), from a local copy of the public checkpoint.

Synchformer (Iashin et al., 2024) reads 4.8 s of a clip as 14 overlapping segments of 0.64 s
(16 frames at 25 fps, a new segment every 8 frames), turns each into features (video: a
MotionFormer, a ViT-B/16 with divided space-time attention, then attention over each frame's
patches; audio: an AST on a 128-bin log-mel fbank, then attention over frequency), and a small
transformer over all segments' tokens classifies the offset between the two streams into 21
classes from -2 s to +2 s in steps of 0.2 s. DeSync of a clip is the absolute predicted offset,
averaged over its first and its last 4.8 s; of a set, the mean over its clips. Lower is better.

The modules below carry the checkpoint's parameter names (``vfeat_extractor``,
``afeat_extractor.ast`` in the layout of transformers' AST before version 5, ``vproj``,
``aproj``, ``transformer``), so ``synchformer_state_dict.pth`` loads as it is; its sizes are
read from the file, so the narrow networks the tests save in the same layout load the same way.
Preprocessing follows av-benchmark: frames re-timed to 25 fps, resized (short side 224,
bicubic) and centre-cropped to 224, scaled to [-1, 1]; audio at 16 kHz, Kaldi fbank of 128 mel
bins every 10 ms (25 ms Hann windows), 66 frames a segment, normalised as AST's training was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from svgen.metrics.weights import FeatureWeightsError, load_state, read_state

FPS = 25.0
RATE = 16000
SEGMENT = 16          # frames (0.64 s)
STEP = 8              # frames between segment starts (0.32 s)
SEGMENTS = 14         # 4.8 s
WINDOW = (SEGMENTS - 1) * STEP / FPS + SEGMENT / FPS   # 4.8 s
OFFSETS = np.linspace(-2.0, 2.0, 21)
MEL_BINS, SPEC_FRAMES = 128, 66
AST_MEAN, AST_STD = -4.2677393, 4.5689974


@dataclass(frozen=True)
class Sizes:
    """Widths and depths (the published checkpoint: dim 768, 12 blocks, 12 heads everywhere
    but the sync transformer's 8; the tests' narrow copies differ in dim and depth only)."""

    dim: int = 768
    depth: int = 12
    ast_depth: int = 12
    sync_depth: int = 3
    image: int = 224
    patch: int = 16

    @property
    def heads(self) -> int:
        return max(1, self.dim // 64)

    @property
    def sync_heads(self) -> int:
        return max(1, self.dim // 96)

    @property
    def grid(self) -> int:
        return self.image // self.patch


class _AggregationLayer(nn.TransformerEncoderLayer):
    """A pre-norm transformer layer over a set of tokens with a learned CLS token prepended;
    returns the CLS token's output (the checkpoint's spatial and frequency aggregation)."""

    def __init__(self, dim: int, heads: int):
        super().__init__(d_model=dim, nhead=heads, dim_feedforward=4 * dim, dropout=0.0, activation=nn.GELU(),
                         batch_first=True, norm_first=True, layer_norm_eps=1e-6)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return super().forward(x)[:, 0]


# ---------------------------------------------------------------------------------------------
# Video: MotionFormer
# ---------------------------------------------------------------------------------------------


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int, depth: int | None = None):
        super().__init__()
        if depth is None:
            self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        else:
            self.proj = nn.Conv3d(3, dim, (depth, patch, patch), stride=(depth, patch, patch))


class _DividedAttention(nn.Module):
    """Attention within groups of tokens (one frame's patches, or one patch across frames); the
    CLS token attends to every token and every group attends to it."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int, over: str) -> torch.Tensor:
        b = x.shape[0]
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)
        per = "b h (f n) d -> (b f) h n d" if over == "space" else "b h (f n) d -> (b n) h f d"
        q_, k_, v_ = (rearrange(t[:, :, 1:], per, f=frames) for t in (q, k, v))
        groups = q_.shape[0] // b
        cls_k = k[:, :, :1].repeat_interleave(groups, dim=0)
        cls_v = v[:, :, :1].repeat_interleave(groups, dim=0)
        out = F.scaled_dot_product_attention(q_, torch.cat([cls_k, k_], dim=2), torch.cat([cls_v, v_], dim=2))
        back = "(b f) h n d -> b h (f n) d" if over == "space" else "(b n) h f d -> b h (f n) d"
        out = rearrange(out, back, b=b)
        out = torch.cat([cls_out, out], dim=2)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class _Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _SpaceTimeBlock(nn.Module):
    """Attention over time at each patch, then over space within each frame, then an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim, eps=1e-6) for _ in range(3))
        self.attn = _DividedAttention(dim, heads)
        self.timeattn = _DividedAttention(dim, heads)
        self.mlp = _Mlp(dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames, "time")
        x = x + self.attn(self.norm1(x), frames, "space")
        return x + self.mlp(self.norm2(x))


class MotionFormer(nn.Module):
    """Per segment (B*S, 3, 16, 224, 224) -> features (B*S, 8, dim): tubelets of 2 frames x 16 x
    16 pixels, divided space-time blocks, then each of the 8 time steps' patches pooled by
    attention."""

    def __init__(self, s: Sizes):
        super().__init__()
        self.s = s
        self.patch_embed = _PatchEmbed(s.dim, s.patch)            # in the checkpoint, unused
        self.patch_embed_3d = _PatchEmbed(s.dim, s.patch, depth=2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, s.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, s.grid ** 2 + 1, s.dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, SEGMENT // 2, s.dim))
        self.blocks = nn.ModuleList(_SpaceTimeBlock(s.dim, s.heads) for _ in range(s.depth))
        self.norm = nn.LayerNorm(s.dim, eps=1e-6)
        self.spatial_attn_agg = _AggregationLayer(s.dim, s.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[0], SEGMENT // 2
        x = self.patch_embed_3d.proj(x).flatten(2).transpose(1, 2)          # (n, t*h*w, dim), time-major
        patches = self.s.grid ** 2
        pos = self.pos_embed[:, 1:].repeat(1, t, 1) + self.temp_embed.repeat_interleave(patches, dim=1)
        cls = self.cls_token.expand(n, -1, -1) + self.pos_embed[:, :1]
        x = torch.cat([cls, x + pos], dim=1)
        for block in self.blocks:
            x = block(x, t)
        x = self.norm(x[:, 1:])
        x = rearrange(x, "n (t p) d -> (n t) p d", t=t)
        return self.spatial_attn_agg.pooled(x).view(n, t, -1)


# ---------------------------------------------------------------------------------------------
# Audio: AST (transformers' layout before version 5)
# ---------------------------------------------------------------------------------------------


class _AstEmbeddings(nn.Module):
    def __init__(self, dim: int, positions: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, positions, dim))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(1, dim, 16, stride=10)


class _AstSelfAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _AstAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attention = _AstSelfAttention(dim)
        self.output = _Dense(dim, dim)


class _AstLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention = _AstAttention(dim)
        self.intermediate = _Dense(dim, 4 * dim)
        self.output = _Dense(4 * dim, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layernorm_before(x)
        a = self.attention.attention
        q, k, v = (rearrange(f(h), "b n (h d) -> b h n d", h=self.heads) for f in (a.query, a.key, a.value))
        y = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        x = x + self.attention.output.dense(y)
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class _AstEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        self.layer = nn.ModuleList(_AstLayer(dim, heads) for _ in range(depth))


class _Ast(nn.Module):
    def __init__(self, s: Sizes):
        super().__init__()
        self.freq = (MEL_BINS - 16) // 10 + 1
        self.time = (SPEC_FRAMES - 16) // 10 + 1
        self.embeddings = _AstEmbeddings(s.dim, self.freq * self.time + 2)
        self.encoder = _AstEncoder(s.dim, s.ast_depth, s.heads)
        self.layernorm = nn.LayerNorm(s.dim, eps=1e-12)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """(n, 66 frames, 128 bins) -> tokens (n, 2 + freq*time, dim)."""
        e = self.embeddings
        x = e.patch_embeddings.projection(spec.transpose(1, 2).unsqueeze(1)).flatten(2).transpose(1, 2)
        n = x.shape[0]
        x = torch.cat([e.cls_token.expand(n, -1, -1), e.distillation_token.expand(n, -1, -1), x], dim=1)
        x = x + e.position_embeddings
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class AudioFeatures(nn.Module):
    """Per segment (B*S, 66, 128) -> features (B*S, 6, dim): AST, then each time step's frequency
    patches pooled by attention."""

    def __init__(self, s: Sizes):
        super().__init__()
        self.ast = _Ast(s)
        self.freq_attn_agg = _AggregationLayer(s.dim, s.heads)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        n = spec.shape[0]
        x = self.ast(spec)[:, 2:]                                           # freq-major patches
        x = rearrange(x, "n (f t) d -> (n t) f d", f=self.ast.freq)
        return self.freq_attn_agg.pooled(x).view(n, self.ast.time, -1)


# ---------------------------------------------------------------------------------------------
# The sync transformer and the whole network
# ---------------------------------------------------------------------------------------------


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.key, self.query, self.value, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(f(x), "b n (h d) -> b h n d", h=self.heads) for f in (self.query, self.key, self.value))
        return self.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _PositionalEncoding(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(1, tokens, dim))


class SyncTransformer(nn.Module):
    """[OFF, video tokens, MOD, audio tokens] + positions -> blocks -> the OFF token's 21 logits."""

    def __init__(self, s: Sizes, tokens: int):
        super().__init__()
        self.vis_in_lnorm, self.aud_in_lnorm = nn.LayerNorm(s.dim), nn.LayerNorm(s.dim)
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, s.dim))
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, s.dim))
        self.pos_emb_cfg = _PositionalEncoding(tokens, s.dim)
        self.blocks = nn.Sequential(*(_Block(s.dim, s.sync_heads) for _ in range(s.sync_depth)))
        self.ln_f = nn.LayerNorm(s.dim)
        self.off_head = nn.Linear(s.dim, len(OFFSETS))

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        b = v.shape[0]
        x = torch.cat([self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(v), self.MOD_tok.expand(b, -1, -1),
                       self.aud_in_lnorm(a)], dim=1)
        x = self.ln_f(self.blocks(x + self.pos_emb_cfg.pos_emb))
        return self.off_head(x[:, 0])


class Synchformer(nn.Module):
    """(B, 14, 3, 16, 224, 224) video segments and (B, 14, 66, 128) fbank segments -> (B, 21)
    offset logits."""

    def __init__(self, s: Sizes = Sizes()):
        super().__init__()
        self.s = s
        self.vfeat_extractor = MotionFormer(s)
        self.afeat_extractor = AudioFeatures(s)
        self.vproj, self.aproj = nn.Linear(s.dim, s.dim), nn.Linear(s.dim, s.dim)
        a_time = (SPEC_FRAMES - 16) // 10 + 1
        self.transformer = SyncTransformer(s, 2 + SEGMENTS * (SEGMENT // 2 + a_time))

    def forward(self, video: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        b, seg = video.shape[:2]
        v = self.vfeat_extractor(rearrange(video, "b s t c h w -> (b s) c t h w"))
        a = self.afeat_extractor(spec.flatten(0, 1))
        v = self.vproj(v).reshape(b, -1, self.s.dim)
        a = self.aproj(a).reshape(b, -1, self.s.dim)
        return self.transformer(v, a)


# ---------------------------------------------------------------------------------------------
# Loading, preprocessing, the metric
# ---------------------------------------------------------------------------------------------


def sizes_of(state: dict[str, torch.Tensor]) -> Sizes:
    """The network's sizes, read off a checkpoint's tensors."""
    key = "vproj.weight"
    if key not in state:
        raise KeyError(key)

    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    patch = state["vfeat_extractor.patch_embed_3d.proj.weight"].shape[-1]
    positions = state["vfeat_extractor.pos_embed"].shape[1] - 1
    return Sizes(dim=state[key].shape[0], depth=count("vfeat_extractor.blocks."),
                 ast_depth=count("afeat_extractor.ast.encoder.layer."), sync_depth=count("transformer.blocks."),
                 image=int(round(math.sqrt(positions))) * patch, patch=patch)


def load_synchformer(path, key: str = "eval.synchformer_path") -> Synchformer:
    """Synchformer from a local ``synchformer_state_dict.pth`` (MMAudio's release), eval mode."""
    state = read_state(path, "Synchformer", key)
    try:
        s = sizes_of(state)
    except KeyError as e:
        raise FeatureWeightsError(f"'{path}' (config key {key}) does not hold Synchformer weights: no {e}") from None
    net = Synchformer(s)
    # Heads the metric never uses: the video backbone's classifier and the audio one's.
    load_state(net, state, path=path, what="Synchformer", key=key, ignore=("vfeat_extractor.head.", "afeat_extractor.classifier."))
    return net.eval()


def video_segments(frames: np.ndarray, fps: float, start: float, image: int = 224) -> torch.Tensor:
    """(F, H, W, 3) uint8 at ``fps`` -> the 14 segments of the 4.8 s from ``start``: (14, 16, 3,
    image, image), re-timed to 25 fps (the frame on screen at each time), resized and
    centre-cropped, scaled to [-1, 1]."""
    times = start + np.arange(int(round(WINDOW * FPS))) / FPS
    idx = np.clip(np.floor(times * fps + 1e-6).astype(int), 0, len(frames) - 1)
    x = torch.from_numpy(np.ascontiguousarray(frames[idx])).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    scale = image / min(h, w)
    x = F.interpolate(x, size=(max(image, round(h * scale)), max(image, round(w * scale))), mode="bicubic",
                      align_corners=False, antialias=True).clamp(0, 1)
    top, left = (x.shape[-2] - image) // 2, (x.shape[-1] - image) // 2
    x = (x[..., top:top + image, left:left + image] - 0.5) / 0.5
    return torch.stack([x[s * STEP:s * STEP + SEGMENT] for s in range(SEGMENTS)])


def audio_segments(wave: np.ndarray, rate: int, start: float) -> torch.Tensor:
    """Mono (N,) at ``rate`` -> the 14 segments' normalised fbanks (14, 66, 128)."""
    import torchaudio

    y = torch.as_tensor(wave, dtype=torch.float32)
    if rate != RATE:
        y = torchaudio.functional.resample(y, rate, RATE)
    out = []
    for s in range(SEGMENTS):
        a = int(round((start + s * STEP / FPS) * RATE))
        seg = y[a:a + int(round(SEGMENT / FPS * RATE))]
        seg = F.pad(seg, (0, int(round(SEGMENT / FPS * RATE)) - len(seg)))
        fb = torchaudio.compliance.kaldi.fbank(seg[None], htk_compat=True, sample_frequency=RATE, use_energy=False,
                                               window_type="hanning", num_mel_bins=MEL_BINS, dither=0.0,
                                               frame_shift=10)
        fb = F.pad(fb, (0, 0, 0, max(0, SPEC_FRAMES - len(fb))))[:SPEC_FRAMES]
        out.append((fb - AST_MEAN) / (AST_STD * 2))
    return torch.stack(out)


class DesyncError(ValueError):
    """A clip cannot be scored by DeSync; the message says why."""


@torch.no_grad()
def desync(net: Synchformer, frames: np.ndarray, wave: np.ndarray, *, fps: float, rate: int) -> float:
    """DeSync of one clip: |predicted offset| in seconds, mean over its first and last 4.8 s."""
    seconds = min(len(frames) / fps, len(wave) / rate)
    if seconds < WINDOW - 1e-3:
        raise DesyncError(f"DeSync reads {WINDOW:.1f} s of a clip (Synchformer's input), this one has "
                          f"{seconds:.2f} s: generate longer clips or drop desync from eval.metrics")
    dev = next(net.parameters()).device
    starts = sorted({0.0, round(seconds - WINDOW, 6)})
    video = torch.stack([video_segments(frames, fps, s, net.s.image) for s in starts]).to(dev)
    spec = torch.stack([audio_segments(wave, rate, s) for s in starts]).to(dev)
    logits = net(video, spec)
    offsets = OFFSETS[logits.argmax(-1).cpu().numpy()]
    return float(np.mean(np.abs(offsets)))
