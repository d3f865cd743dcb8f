"""The joint audio-video denoiser: two frozen base UNets run in lockstep, joined by trainable
environment encoders and cross-modal blocks (docs/method.md, "Added modules").

Pure torch: no DeepSpeed, Ray or MLflow here (docs/design.md, "Networks free of distributed code").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from svgen.config import ModelConfig
from svgen.models.bases import AudioBase, VideoBase
from svgen.models.cmcpe import make_block
from svgen.models.encoders import EnvironmentEncoder
from svgen.models.fusion import fuse_glue
from svgen.models.unet_runner import AudioUNetRunner, VideoUNetRunner


@dataclass(kw_only=True)
class JointInputs:
    """One joint denoising call. Shapes: audio latents (B, Ca, T, F), video latents (B, Cv, F, H, W)."""

    z_a: torch.Tensor
    """Noisy audio latent fed to the audio UNet."""
    z_v: torch.Tensor
    """Noisy video latent fed to the video UNet."""
    t_a: torch.Tensor
    """(B,) audio UNet timesteps."""
    t_v: torch.Tensor
    """(B,) video UNet timesteps."""
    text_a: torch.Tensor
    """(B, D) CLAP text embeddings (AudioLDM class labels)."""
    text_v: torch.Tensor
    """(B, L, D) CLIP text hidden states."""
    enc_a: torch.Tensor
    """Audio environment-encoder input [zc_a ; x0_hat_a] (B, 2Ca, T, F)."""
    enc_v: torch.Tensor
    """Video environment-encoder input [zc_v ; x0_hat_v] (B, 2Cv, F, H, W)."""
    s_a: torch.Tensor
    """(B,) audio encoder timesteps."""
    s_v: torch.Tensor
    """(B,) video encoder timesteps."""


def _to_own_dtype(module: nn.Module, args: tuple, kwargs: dict):
    """Inputs (and floating buffers, e.g. positional tables, which a parameter-only cast such as
    DeepSpeed's bf16 leaves behind) in the dtype of the module's parameters."""
    x = args[0]
    module._input_dtype = x.dtype
    dtype = next(module.parameters()).dtype
    if getattr(module, "_buffers_dtype", None) != dtype:  # once per dtype, not every forward
        for sub in module.modules():
            for key, buf in sub._buffers.items():
                if buf is not None and buf.is_floating_point() and buf.dtype != dtype:
                    sub._buffers[key] = buf.to(dtype)
        module._buffers_dtype = dtype
    return ((x.to(dtype),) + tuple(args[1:]), kwargs) if x.dtype != dtype else None


def _back_to_input_dtype(module: nn.Module, args: tuple, output):
    dtype = getattr(module, "_input_dtype", None)
    return output.to(dtype) if torch.is_tensor(output) and dtype is not None and output.dtype != dtype else None


class JointModel(nn.Module):
    """The trainable joint denoiser.

    The frozen base UNets are *referenced, not registered*: this module's parameters and
    state_dict hold only what is trained (encoders, cross-modal blocks, and the video motion
    modules when they are switched on, registered under ``motion_modules``). A distributed
    wrapper (DeepSpeed ZeRO) therefore partitions and checkpoints only trained weights, while
    each rank keeps the frozen bases whole, in their own dtype, never gathered.
    """

    def __init__(self, audio: AudioBase, video: VideoBase, cfg: ModelConfig, fps: float = 8.0, seconds: float = 4.0):
        super().__init__()
        self.cfg = cfg
        self._bases = (audio.unet, video.unet)  # a tuple: nn.Module does not register it
        self.audio_runner = AudioUNetRunner(audio.unet)
        self.video_runner = VideoUNetRunner(video.unet)
        if self.audio_runner.num_down != self.video_runner.num_down:
            raise ValueError(f"the two UNets must have the same number of down blocks to run in lockstep "
                             f"(audio {self.audio_runner.num_down}, video {self.video_runner.num_down})")
        c = cfg.cmcpe
        n = self.audio_runner.num_down
        for name, idx in (("down_blocks", c.down_blocks), ("up_blocks", c.up_blocks)):
            bad = [i for i in idx if i >= n]
            if bad:
                raise ValueError(f"model.cmcpe.{name} {bad} out of range: the UNets have {n} blocks (0..{n - 1})")
        e = cfg.encoder
        ca, cv = audio.latent_channels, video.latent_channels
        # Audio latents are padded in time to the UNet's total downsampling (100 -> 104 frames).
        self.audio_multiple = audio.unet_downsample
        self.encoder_a = EnvironmentEncoder(2 * ca, audio.unet.config.block_out_channels[0], e.context_dim,
                                            self.audio_runner.time_embed_dim, video=False)
        self.encoder_v = EnvironmentEncoder(2 * cv, video.unet.config.block_out_channels[0], e.context_dim,
                                            self.video_runner.time_embed_dim, video=True, fps=fps,
                                            temporal_heads=e.temporal_heads, temporal_norm=e.temporal_norm)
        self.blocks_a = nn.ModuleDict()
        self.blocks_v = nn.ModuleDict()
        for modality, unet, blocks in (("a", audio.unet, self.blocks_a), ("v", video.unet, self.blocks_v)):
            widths = list(unet.config.block_out_channels)
            points = [(f"down{i}", widths[i]) for i in c.down_blocks] + \
                     [(f"up{i}", widths[::-1][i]) for i in c.up_blocks]
            for key, width in points:
                blocks[key] = make_block(c.mode, width, e.context_dim, head_dim=c.head_dim, depth=c.depth,
                                         per_frame=modality == "v", resample=c.resample, kernel=c.kernel,
                                         context_norm=c.xattn_context_norm, seconds=seconds)
        fuse_glue([audio.unet, video.unet, self], cfg.glue_kernel)
        audio.unet.requires_grad_(False)
        video.unet.requires_grad_(False)
        audio.unet.eval()
        video.unet.eval()
        if cfg.train_motion_modules:
            mm = [m for name, m in video.unet.named_modules() if name.endswith("motion_modules")]
            self.motion_modules = nn.ModuleList(mm)
            self.motion_modules.requires_grad_(True)
            # Trained, they take the training precision (DeepSpeed bf16 casts what is registered)
            # while the rest of the video UNet keeps the bases' dtype: cast at their boundary.
            for blocks in mm:
                for m in blocks:
                    m.register_forward_pre_hook(_to_own_dtype, with_kwargs=True)
                    m.register_forward_hook(_back_to_input_dtype)

    @property
    def audio_unet(self) -> nn.Module:
        return self._bases[0]

    @property
    def video_unet(self) -> nn.Module:
        return self._bases[1]

    def frozen_parameters(self) -> dict[str, nn.Parameter]:
        """Base weights that are not trained, by name (audio_unet.*, video_unet.*)."""
        out = {}
        for prefix, unet in (("audio_unet", self.audio_unet), ("video_unet", self.video_unet)):
            out.update({f"{prefix}.{n}": p for n, p in unet.named_parameters() if not p.requires_grad})
        return out

    # ---------------------------------------------------------------------------------------
    def added_modules(self) -> list[nn.Module]:
        return [self.encoder_a, self.encoder_v, self.blocks_a, self.blocks_v]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer sees: added modules, plus motion modules when switched on."""
        return [p for p in self.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.trainable_parameters())
        frozen = sum(p.numel() for p in self.frozen_parameters().values())
        return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen}

    def train(self, mode: bool = True) -> "JointModel":
        """Frozen bases stay in eval mode (no dropout); registered motion modules follow ``mode``."""
        super().train(mode)
        self.audio_unet.eval()
        self.video_unet.eval()
        if mode and self.cfg.train_motion_modules:
            self.motion_modules.train()
        return self

    def to_device(self, device: torch.device) -> "JointModel":
        """Move the trained modules and the referenced bases (``.to`` moves only the former)."""
        self.to(device)
        self.audio_unet.to(device)
        self.video_unet.to(device)
        return self

    # ---------------------------------------------------------------------------------------
    def pad_audio(self, z: torch.Tensor) -> torch.Tensor:
        """Zeros appended in time up to the audio UNet's total downsampling (docs/method.md, "Training (one step)" step 5)."""
        extra = (-z.shape[2]) % self.audio_multiple
        return F.pad(z, (0, 0, 0, extra)) if extra else z

    def forward(self, x: JointInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Both UNet outputs (eps or v), run block by block in lockstep.

        Audio latents of any length: the noisy latent and the encoder input are padded with zeros
        to the UNet's downsampling (as the reference pads after noising) and the audio output is
        cropped back to the input's frames, so padding never reaches a loss or a sample."""
        ra, rv = self.audio_runner, self.video_runner
        frames_a = x.z_a.shape[2]
        temb_a = ra.time_embed(x.s_a, x.z_a.shape[0], x.z_a.device)
        temb_v = rv.time_embed(x.s_v, x.z_v.shape[0], x.z_v.device)
        p_a = self.encoder_a(self.pad_audio(x.enc_a).to(self.encoder_a.conv_in.weight.dtype), temb_a)
        p_v = self.encoder_v(x.enc_v.to(self.encoder_v.conv_in.weight.dtype), temb_v)
        da, dv = self.audio_unet.dtype, self.video_unet.dtype
        sa = ra.begin(self.pad_audio(x.z_a).to(da), x.t_a, x.text_a.to(da))
        sv = rv.begin(x.z_v.to(dv), x.t_v, x.text_v.to(dv))
        for i in range(ra.num_down):
            ra.down(sa, i)
            rv.down(sv, i)
            self._cross(f"down{i}", sa, sv, p_a=p_a, p_v=p_v, replace_skip=True)
        ra.mid(sa)
        rv.mid(sv)
        for i in range(ra.num_up):
            ra.up(sa, i)
            rv.up(sv, i)
            self._cross(f"up{i}", sa, sv, p_a=p_a, p_v=p_v, replace_skip=False)
        return ra.end(sa)[:, :, :frames_a], rv.end(sv)

    def _cross(self, key: str, sa, sv, *, p_a: torch.Tensor, p_v: torch.Tensor, replace_skip: bool) -> None:
        if key not in self.blocks_a:
            return
        ra, rv = self.audio_runner, self.video_runner
        # Audio is conditioned on the video features and vice versa.
        sa.h = ra.from_btcs(self.blocks_a[key](ra.to_btcs(sa.h, sa), p_v), sa, sa.h)
        sv.h = rv.from_btcs(self.blocks_v[key](rv.to_btcs(sv.h, sv), p_a), sv, sv.h)
        if replace_skip:
            ra.replace_last_skip(sa)
            rv.replace_last_skip(sv)
