"""The joint system: both frozen bases, the trainable joint denoiser and each base's noise
schedule, as one object that training, validation, sampling and the benchmarks call.

It sits above ``svgen.models`` (networks), ``svgen.diffusion`` (noise schedules, timestep
adjustment) and ``svgen.data`` (batches), which know nothing of each other; the docs/method.md
objective (``objective.py``) and the joint sampler (``sampler.py``) live here because they are
where a network meets a noise process.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from svgen.config import Config, DataConfig, LossConfig, SampleConfig
from svgen.data.latents import LatentBatch
from svgen.diffusion.schedule import Schedule
from svgen.models.bases import AudioBase, VideoBase, load_audio_base, load_video_base
from svgen.models.codec import Posterior, audio_posterior, video_posterior
from svgen.models.joint import JointModel
from svgen.system.objective import joint_loss
from svgen.system.sampler import Given, sample_latents

__all__ = ["DTYPES", "Given", "JointSystem", "build_system"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE_FORMAT = "posterior-mean-std/unpadded-audio"
"""What a cached latent holds; part of the encoder fingerprint, so an older cache is refused."""


@dataclass(kw_only=True)
class JointSystem:
    """Everything training and sampling need: the bases (VAEs, vocoder, text encoders), the joint
    denoiser, each base's noise schedule, and the empty-prompt embeddings for caption dropout."""

    audio: AudioBase
    video: VideoBase
    model: JointModel
    sched_a: Schedule
    sched_v: Schedule
    empty_a: torch.Tensor
    empty_v: torch.Tensor

    def to(self, device: torch.device) -> "JointSystem":
        self.model.to_device(device)
        for m in (self.audio.vae, self.audio.vocoder, self.audio.text_encoder, self.video.vae, self.video.text_encoder):
            if m is not None:  # no vocoder with model.audio.vocoder=griffin_lim
                m.to(device)
        self.empty_a, self.empty_v = self.empty_a.to(device), self.empty_v.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio.encode_text(prompts), self.video.encode_text(prompts)

    @torch.no_grad()
    def encode_posteriors(self, batch: dict, data: DataConfig
                          ) -> tuple[Posterior, Posterior, torch.Tensor, torch.Tensor]:
        """A raw clip batch (frames, waveforms, captions) -> the frozen VAEs' posteriors over the
        audio and video latents, and the text embeddings."""
        dev = self.device
        text_a, text_v = self.encode_text(batch["caption"])
        return (audio_posterior(self.audio, batch["wave"].to(dev, non_blocking=True), data),
                video_posterior(self.video, batch["frames"].to(dev, non_blocking=True)), text_a, text_v)

    @torch.no_grad()
    def encode(self, batch: dict, data: DataConfig, generator: torch.Generator | None = None) -> LatentBatch:
        """A raw clip batch -> training latents, drawn from the VAE posteriors (docs/method.md, "Training (one step)" step 5)."""
        post_a, post_v, text_a, text_v = self.encode_posteriors(batch, data)
        return LatentBatch(post_a.sample(generator), post_v.sample(generator), text_a, text_v)

    def encoder_fingerprint(self, data: DataConfig) -> str:
        """Hash of everything a cached latent depends on: the frozen VAEs' and text encoders'
        weights and the clip/feature settings. A cache made with other encoders or settings is stale."""
        keys = ("seconds", "fps", "size", "sample_rate", "n_mels", "hop_length", "win_length", "fmax")
        # The cache format is part of it: caches from before the posterior was stored are stale.
        settings = {"cache_format": CACHE_FORMAT, **{k: getattr(data, k) for k in keys}}
        h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
        for module in (self.audio.vae, self.audio.text_encoder, self.video.vae, self.video.text_encoder):
            for name, t in sorted(module.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()

    def loss(self, batch: LatentBatch, cfg: LossConfig, *, generator: torch.Generator | None = None,
             model: torch.nn.Module | None = None, skip_unused_pass: bool = True
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The docs/method.md training loss of one batch and its per-modality parts (detached tensors:
        converting them to numbers is the caller's choice, so a step needs no host sync).
        ``model``: what runs the forward, e.g. the DeepSpeed engine wrapping ``self.model``."""
        return joint_loss(self, batch, cfg, generator=generator, model=model, skip_unused_pass=skip_unused_pass)

    def sample(self, *, text: tuple[torch.Tensor, torch.Tensor], negative: tuple[torch.Tensor, torch.Tensor],
               shapes: tuple[tuple, tuple], cfg: SampleConfig, generator=None, progress: bool = True,
               given_a: Given | None = None, given_v: Given | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio latents, video latents) for prompt embeddings ``text`` = (audio, video), with
        ``negative`` as the unconditional branch of CFG; see ``sampler.sample_latents``."""
        return sample_latents(self, text=text, negative=negative, shapes=shapes, cfg=cfg, generator=generator,
                              progress=progress, given_a=given_a, given_v=given_v)


def build_system(cfg: Config, seed: int | None = None) -> JointSystem:
    """Load the bases named by ``cfg.model`` and build the joint model (added modules seeded)."""
    dtype = DTYPES[cfg.model.base_dtype]
    audio = load_audio_base(cfg.model.audio.path, dtype, vocoder=cfg.model.audio.vocoder)
    video = load_video_base(cfg.model.video.path, cfg.model.video.motion_adapter_path, dtype)
    torch.manual_seed(cfg.train.seed if seed is None else seed)
    model = JointModel(audio, video, cfg.model, fps=cfg.data.fps, seconds=cfg.data.seconds)
    empty_a, empty_v = audio.encode_text([""]), video.encode_text([""])
    return JointSystem(audio=audio, video=video, model=model, sched_a=Schedule(cfg.model.audio.schedule),
                       sched_v=Schedule(cfg.model.video.schedule), empty_a=empty_a[0], empty_v=empty_v[0])
