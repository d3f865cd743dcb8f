"""IB-score: how well a clip's sound matches its picture in ImageBind's joint embedding space
(the semantic alignment score of the paper's Table 2 and of MMAudio's av-benchmark).

ImageBind (Girdhar et al., 2023) embeds each modality with its own transformer into one space.
The score of a clip is the cosine similarity between its video embedding and its audio embedding;
of a set, the mean over its clips (papers print it x100). Higher is better.

ImageBind's code and weights are licensed CC-BY-NC 4.0, so svgen ships neither: this module is
svgen's own implementation of the two encoders the score needs, in the layout of the released
``imagebind_huge.pth`` so that a copy the user obtained loads as it is
(``eval.imagebind_path``; the text, depth, thermal and IMU branches in the file are ignored).
Using those weights binds the user to their licence.

The preprocessing follows ImageBind's own data loaders:
- video: 5 windows of 2 s spread evenly over the clip (the first at 0 s, the last ending at the
  clip's end), 2 frames of each (its first and its last), short side scaled to 224 (bilinear),
  normalised with CLIP's mean and std, and 3 crops of 224 x 224 (left/top, centre, right/bottom):
  15 views, each a 2-frame video patchified by a (2, 14, 14) convolution;
- audio: 16 kHz, 3 windows of 2 s spread the same way, each minus its mean, a 128-bin Kaldi fbank
  (25 ms Hann windows every 10 ms) zero-padded to 204 frames, normalised by (x + 4.268) / 9.138,
  patchified by a 16 x 16 convolution of stride 10;
- each view's embedding is the projected, L2-normalised class token; a clip's embedding in a
  modality is the mean over its views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from svgen.metrics.weights import FeatureWeightsError, load_state, read_state

RATE = 16000
CLIP_SECONDS = 2.0
VIDEO_CLIPS, AUDIO_CLIPS = 5, 3
IMAGE = 224
MEL_BINS, MEL_FRAMES = 128, 204
AUDIO_STRIDE = 10
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VISION_HEAD_DIM, AUDIO_HEAD_DIM = 80, 64   # 1280 / 16 heads, 768 / 12 heads in the released model
# Branches of the released file the score does not use.
UNUSED = (".text.", ".depth.", ".thermal.", ".imu.", "modality_postprocessors.")


@dataclass(frozen=True)
class Sizes:
    """Widths and depths (the released ImageBind-Huge by default; the tests' narrow copies differ
    in widths and depths only)."""

    vision_dim: int = 1280
    vision_depth: int = 32
    audio_dim: int = 768
    audio_depth: int = 12
    out_dim: int = 1024
    patch: int = 14
    frames: int = 2
    audio_patch: int = 16

    @property
    def vision_heads(self) -> int:
        return max(1, self.vision_dim // VISION_HEAD_DIM)

    @property
    def audio_heads(self) -> int:
        return max(1, self.audio_dim // AUDIO_HEAD_DIM)

    @property
    def vision_tokens(self) -> int:
        return (IMAGE // self.patch) ** 2 + 1

    @property
    def audio_tokens(self) -> int:
        return ((MEL_BINS - self.audio_patch) // AUDIO_STRIDE + 1) * ((MEL_FRAMES - self.audio_patch) // AUDIO_STRIDE + 1) + 1


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; the audio trunk's attention has a learnt extra key and value
    (``bias_k``, ``bias_v``) that every query can attend to."""

    def __init__(self, dim: int, heads: int, bias_kv: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=bias_kv, batch_first=True)
        self.norm_1, self.norm_2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class Trunk(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, pre_norm: bool, bias_kv: bool):
        super().__init__()
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-6) if pre_norm else nn.Identity())
        self.blocks = nn.Sequential(*[Block(dim, heads, bias_kv) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pre_transformer_layer(x))


class Stem(nn.Module):
    def __init__(self, proj: nn.Module, norm: nn.Module | None = None):
        super().__init__()
        self.proj = proj
        self.norm_layer = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)          # (B, C, ...) -> (B, tokens, C)
        return x if self.norm_layer is None else self.norm_layer(x)


class PosEmbed(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))


class Tokens(nn.Module):
    """Patches -> class token + patch tokens + learnt positions."""

    def __init__(self, stem: Stem, tokens: int, dim: int):
        super().__init__()
        self.rgbt_stem = stem
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding_helper = PosEmbed(tokens, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.rgbt_stem(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        return x + self.pos_embedding_helper.pos_embed


class _ClassToken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim, eps=1e-6), _ClassToken(), nn.Linear(dim, out, bias=False))


class ImageBind(nn.Module):
    """ImageBind's vision and audio encoders: (N, 3, 2, 224, 224) video views or (N, 1, 128, 204)
    fbanks -> (N, out_dim) unit vectors."""

    def __init__(self, s: Sizes = Sizes()):
        super().__init__()
        self.s = s
        # Index 0 of the vision stem is ImageBind's image-to-video padding, a no-op for 2-frame views.
        vision_stem = Stem(nn.Sequential(nn.Identity(), nn.Conv3d(3, s.vision_dim, (s.frames, s.patch, s.patch),
                                                                  stride=(s.frames, s.patch, s.patch), bias=False)))
        audio_stem = Stem(nn.Conv2d(1, s.audio_dim, s.audio_patch, stride=AUDIO_STRIDE, bias=False),
                          nn.LayerNorm(s.audio_dim))
        self.modality_preprocessors = nn.ModuleDict({
            "vision": Tokens(vision_stem, s.vision_tokens, s.vision_dim),
            "audio": Tokens(audio_stem, s.audio_tokens, s.audio_dim)})
        self.modality_trunks = nn.ModuleDict({
            "vision": Trunk(s.vision_dim, s.vision_depth, s.vision_heads, pre_norm=True, bias_kv=False),
            "audio": Trunk(s.audio_dim, s.audio_depth, s.audio_heads, pre_norm=False, bias_kv=True)})
        self.modality_heads = nn.ModuleDict({"vision": _head(s.vision_dim, s.out_dim),
                                             "audio": _head(s.audio_dim, s.out_dim)})

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        x = self.modality_preprocessors[modality](x)
        x = self.modality_heads[modality](self.modality_trunks[modality](x))
        return F.normalize(x, dim=-1)


# ---------------------------------------------------------------------------------------------
# Loading, preprocessing, the score
# ---------------------------------------------------------------------------------------------


def sizes_of(state: dict[str, torch.Tensor]) -> Sizes:
    """The encoders' sizes, read off a checkpoint's tensors (KeyError names a missing tensor)."""
    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    conv = state["modality_preprocessors.vision.rgbt_stem.proj.1.weight"]
    aconv = state["modality_preprocessors.audio.rgbt_stem.proj.weight"]
    return Sizes(vision_dim=conv.shape[0], vision_depth=count("modality_trunks.vision.blocks."),
                 audio_dim=aconv.shape[0], audio_depth=count("modality_trunks.audio.blocks."),
                 out_dim=state["modality_heads.vision.2.weight"].shape[0], patch=conv.shape[-1],
                 frames=conv.shape[2], audio_patch=aconv.shape[-1])


def load_imagebind(path, key: str = "eval.imagebind_path") -> ImageBind:
    """ImageBind's vision and audio encoders from a local ``imagebind_huge.pth``, eval mode."""
    state = read_state(path, "ImageBind", key)
    try:
        s = sizes_of(state)
    except KeyError as e:
        raise FeatureWeightsError(f"'{path}' (config key {key}) does not hold ImageBind weights: no {e}") from None
    if s.vision_dim % s.vision_heads or s.audio_dim % s.audio_heads:
        raise FeatureWeightsError(f"'{path}' (config key {key}): widths {s.vision_dim}/{s.audio_dim} do not split "
                                  f"into heads of {VISION_HEAD_DIM}/{AUDIO_HEAD_DIM} channels as ImageBind's do")
    net = ImageBind(s)
    load_state(net, state, path=path, what="ImageBind", key=key, ignore=UNUSED)
    return net.eval()


def clip_windows(seconds: float, clips: int, length: float = CLIP_SECONDS) -> list[tuple[float, float]]:
    """``clips`` windows of ``length`` s spread evenly over ``seconds`` (pytorchvideo's constant
    clips-per-video sampler, as ImageBind's loaders use it)."""
    step = max(seconds - length, 0.0) / max(clips - 1, 1)
    return [(i * step, i * step + length) for i in range(clips)]


def _short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if w < h:
        new_h, new_w = int(math.floor(h / w * size)), size
    else:
        new_h, new_w = size, int(math.floor(w / h * size))
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)


def _crops(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Three crops along the long side: start, centre, end."""
    h, w = x.shape[-2:]
    y, xo = int(math.ceil((h - size) / 2)), int(math.ceil((w - size) / 2))
    out = []
    for i in range(3):
        yy, xx = y, xo
        if h > w:
            yy = (0, y, h - size)[i]
        else:
            xx = (0, xo, w - size)[i]
        out.append(x[..., yy:yy + size, xx:xx + size])
    return out


def video_views(frames: np.ndarray, fps: float) -> torch.Tensor:
    """(F, H, W, 3) uint8 at ``fps`` -> (15, 3, 2, 224, 224): 5 windows x 3 crops of 2 frames."""
    views = []
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1, 1)
    for start, end in clip_windows(len(frames) / fps, VIDEO_CLIPS):
        idx = np.arange(math.ceil(start * fps - 1e-9), min(math.ceil(end * fps - 1e-9), len(frames)))
        pick = idx[torch.linspace(0, len(idx) - 1, 2).long().numpy()]          # the window's first and last
        x = torch.from_numpy(np.ascontiguousarray(frames[pick])).permute(0, 3, 1, 2).float() / 255.0
        x = _short_side(x, IMAGE).permute(1, 0, 2, 3)                         # (3, 2, H', W')
        views += _crops((x - mean) / std, IMAGE)
    return torch.stack(views)


def audio_views(wave: np.ndarray, rate: int) -> torch.Tensor:
    """Mono (N,) at ``rate`` -> (3, 1, 128, 204) normalised fbanks of 3 windows of 2 s."""
    import torchaudio

    y = torch.as_tensor(wave, dtype=torch.float32)
    if rate != RATE:
        y = torchaudio.functional.resample(y, rate, RATE)
    out = []
    for start, end in clip_windows(len(y) / RATE, AUDIO_CLIPS):
        seg = y[int(start * RATE):int(end * RATE)]
        fb = torchaudio.compliance.kaldi.fbank((seg - seg.mean())[None], htk_compat=True, sample_frequency=RATE,
                                               use_energy=False, window_type="hanning", num_mel_bins=MEL_BINS,
                                               dither=0.0, frame_length=25, frame_shift=10).T
        fb = F.pad(fb, (0, max(0, MEL_FRAMES - fb.shape[1])))[:, :MEL_FRAMES]
        out.append(((fb - AUDIO_MEAN) / AUDIO_STD)[None])
    return torch.stack(out)


class ImageBindError(ValueError):
    """A clip cannot be scored by ImageBind; the message says why."""


@torch.no_grad()
def ib_score(net: ImageBind, frames: np.ndarray, wave: np.ndarray, *, fps: float, rate: int) -> float:
    """Cosine similarity of a clip's mean video embedding and its mean audio embedding."""
    seconds = min(len(frames) / fps, len(wave) / rate)
    if seconds < CLIP_SECONDS - 1e-3:
        raise ImageBindError(f"the ImageBind score reads windows of {CLIP_SECONDS:.0f} s, this clip has "
                             f"{seconds:.2f} s: generate longer clips or drop ib_score from eval.metrics")
    dev = next(net.parameters()).device
    v = net.embed("vision", video_views(frames, fps).to(dev)).mean(0)
    a = net.embed("audio", audio_views(wave, rate).to(dev)).mean(0)
    return float(F.cosine_similarity(v, a, dim=0))
