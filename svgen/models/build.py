"""Assemble the joint model from a config: load and freeze both bases, add the trainable modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from svgen.config import Config
from svgen.diffusion.schedule import Schedule
from svgen.models.bases import AudioBase, VideoBase, load_audio_base, load_video_base
from svgen.models.joint import JointModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
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
            m.to(device)
        self.empty_a, self.empty_v = self.empty_a.to(device), self.empty_v.to(device)
        return self

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio.encode_text(prompts), self.video.encode_text(prompts)


def build_system(cfg: Config, seed: int | None = None) -> JointSystem:
    """Load the bases named by ``cfg.model`` and build the joint model (added modules seeded)."""
    dtype = DTYPES[cfg.model.base_dtype]
    if cfg.model.audio.schedule.num_train_timesteps != cfg.model.video.schedule.num_train_timesteps:
        raise ValueError("both bases must share num_train_timesteps: training draws one shared t")
    audio = load_audio_base(cfg.model.audio.path, dtype)
    video = load_video_base(cfg.model.video.path, cfg.model.video.motion_adapter_path, dtype)
    torch.manual_seed(cfg.train.seed if seed is None else seed)
    model = JointModel(audio, video, cfg.model)
    empty_a, empty_v = audio.encode_text([""]), video.encode_text([""])
    return JointSystem(audio, video, model, Schedule(cfg.model.audio.schedule), Schedule(cfg.model.video.schedule),
                       empty_a[0], empty_v[0])
