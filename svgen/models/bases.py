"""Load the frozen base models from local directories in diffusers layout.

audio (AudioLDM, e.g. cvssp/audioldm-m-full): unet/ vae/ vocoder/ text_encoder/ (CLAP) tokenizer/
video (Realistic Vision V5.1 / SD-1.5):        unet/ vae/ text_encoder/ (CLIP) tokenizer/
motion adapter (AnimateDiff v1-5-2):           config.json + weights

The classes are the ones diffusers and transformers load these checkpoints with, so a real
download and a tiny model from ``svgen.models.tiny`` go through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from transformers import (
    AutoTokenizer,
    ClapTextModelWithProjection,
    CLIPTextModel,
    SpeechT5HifiGan,
)


class BaseModelError(FileNotFoundError):
    """A base-model directory is missing or malformed; the message names the path."""


_WEIGHTS = {
    "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "transformers": ("model.safetensors", "pytorch_model.bin"),
}
_TOKENIZER_FILES = ("vocab.json", "merges.txt")


def unet_downsample(unet) -> int:
    """A diffusers UNet's total downsampling factor (2 per upsampler)."""
    return 2 ** unet.num_upsamplers


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise BaseModelError(f"{what}: expected a directory at '{path}', found "
                              f"{'a file' if path.exists() else 'nothing'}. Point the config at a "
                              "local checkpoint in diffusers layout (see README, 'Checkpoints').")
    return path


def _require_model(path: Path, kind: str, what: str) -> Path:
    _require_dir(path, what)
    if not (path / "config.json").is_file():
        raise BaseModelError(f"{what}: '{path / 'config.json'}' is missing")
    if not any((path / name).is_file() for name in _WEIGHTS[kind]) and not any(path.glob("*.safetensors.index.json")):
        raise BaseModelError(f"{what}: no weights in '{path}' (expected one of {', '.join(_WEIGHTS[kind])})")
    return path


def _require_tokenizer(path: Path, what: str) -> Path:
    _require_dir(path, what)
    missing = [n for n in _TOKENIZER_FILES if not (path / n).is_file()]
    if missing and not (path / "tokenizer.json").is_file():
        raise BaseModelError(f"{what}: '{path}' lacks {', '.join(missing)} (or tokenizer.json)")
    return path


def _freeze(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module.to(dtype)


@dataclass
class AudioBase:
    """AudioLDM: UNet over mel-VAE latents, CLAP text embedding as class label, HiFi-GAN vocoder
    (None: Griffin-Lim, see svgen.models.codec.decode_audio)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    vocoder: SpeechT5HifiGan | None
    text_encoder: ClapTextModelWithProjection
    tokenizer: object

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, D) L2-normalised CLAP text embeddings, as AudioLDMPipeline computes them."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        dev = self.text_encoder.device
        out = self.text_encoder(tok.input_ids.to(dev), attention_mask=tok.attention_mask.to(dev))
        return F.normalize(out.text_embeds, dim=-1).to(self.unet.dtype)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def unet_downsample(self) -> int:
        """The UNet's total downsampling: latent lengths must be a multiple of it."""
        return unet_downsample(self.unet)


@dataclass
class VideoBase:
    """AnimateDiff: SD-1.5 spatial UNet + motion modules (UNetMotionModel), CLIP text context."""

    unet: UNetMotionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: object

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, D) CLIP last hidden states, as the SD / AnimateDiff pipelines compute them."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        out = self.text_encoder(tok.input_ids.to(self.text_encoder.device))
        return out[0].to(self.unet.dtype)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def motion_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if "motion_modules" in n]


def load_audio_base(path: str | Path, dtype: torch.dtype = torch.float32, vocoder: str = "hifigan") -> AudioBase:
    """Load and freeze AudioLDM from a local diffusers-layout directory (without its vocoder/
    when ``vocoder`` is 'griffin_lim')."""
    root = _require_dir(Path(path), "audio base (AudioLDM, config key model.audio.path)")
    what = f"audio base at '{root}'"
    kw = {"low_cpu_mem_usage": False}
    unet = UNet2DConditionModel.from_pretrained(_require_model(root / "unet", "diffusers", what), **kw)
    vae = AutoencoderKL.from_pretrained(_require_model(root / "vae", "diffusers", what), **kw)
    hifigan = None
    if vocoder == "hifigan":
        hifigan = _freeze(SpeechT5HifiGan.from_pretrained(_require_model(root / "vocoder", "transformers", what)),
                          torch.float32)
    text = ClapTextModelWithProjection.from_pretrained(_require_model(root / "text_encoder", "transformers", what))
    tokenizer = AutoTokenizer.from_pretrained(_require_tokenizer(root / "tokenizer", what))
    return AudioBase(unet=_freeze(unet, dtype), vae=_freeze(vae, dtype), vocoder=hifigan,
                     text_encoder=_freeze(text, torch.float32), tokenizer=tokenizer)


def load_video_base(path: str | Path, motion_adapter_path: str | Path,
                    dtype: torch.dtype = torch.float32) -> VideoBase:
    """Load and freeze SD-1.5 + the AnimateDiff motion adapter as one UNetMotionModel."""
    root = _require_dir(Path(path), "video base (Realistic Vision V5.1 or another SD-1.5-layout model, config key "
                                    "model.video.path)")
    what = f"video base at '{root}'"
    kw = {"low_cpu_mem_usage": False}
    unet2d = UNet2DConditionModel.from_pretrained(_require_model(root / "unet", "diffusers", what), **kw)
    adapter_dir = _require_model(Path(motion_adapter_path), "diffusers",
                                 "motion adapter (AnimateDiff, config key model.video.motion_adapter_path)")
    adapter = MotionAdapter.from_pretrained(adapter_dir, **kw)
    try:
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    except ValueError as e:
        raise BaseModelError(f"motion adapter '{adapter_dir}' does not fit the UNet in '{root / 'unet'}': {e}") from e
    vae = AutoencoderKL.from_pretrained(_require_model(root / "vae", "diffusers", what), **kw)
    text = CLIPTextModel.from_pretrained(_require_model(root / "text_encoder", "transformers", what))
    tokenizer = AutoTokenizer.from_pretrained(_require_tokenizer(root / "tokenizer", what))
    return VideoBase(unet=_freeze(unet, dtype), vae=_freeze(vae, dtype), text_encoder=_freeze(text, torch.float32),
                     tokenizer=tokenizer)
