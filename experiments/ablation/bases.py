"""Tiny pre-trained bases for the ablation (issues 12 and 20): small AudioLDM- and AnimateDiff-class models
trained, each alone, on the hits corpus, then frozen and saved in the real diffusers layout, so
that joint training reads them exactly as it reads real checkpoints.

This module holds the autoencoder stage: the image VAE on frames and the mel VAE on log-mels,
each trained from its random initialisation (svgen.models.tiny) to reconstruct the corpus, with
its latent scaling factor set so the training latents have unit variance (as SD's 0.18215 does
for SD's VAE). The audio base decodes mels with Griffin-Lim (model.audio.vocoder=griffin_lim).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from diffusers import AutoencoderKL
from einops import rearrange

from svgen.config import DataConfig
from svgen.media.audio import LogMel, pad_frames


@dataclass
class FitResult:
    steps: int
    loss_first: float
    """Mean reconstruction loss of the first 10 steps."""
    loss_last: float
    """Mean reconstruction loss of the last 10 steps."""
    scaling_factor: float | None
    """The autoencoders' latent scaling (None for the denoisers)."""


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 -> (B*F, 3, H, W) in [-1, 1], as svgen.models.codec feeds the VAE."""
    return rearrange(frames, "b f h w c -> (b f) c h w").float() / 127.5 - 1.0


def waves_to_mels(wave: torch.Tensor, data: DataConfig, multiple: int) -> torch.Tensor:
    """(B, N) waveform -> (B, 1, frames, n_mels) log-mel, as svgen.models.codec feeds the VAE."""
    return pad_frames(LogMel(data)(wave), multiple)[:, None]


def _bar(steps: int, desc: str):
    from tqdm import tqdm

    return tqdm(range(steps), desc=desc, unit="step", mininterval=2.0)


def _optimise(params: list[torch.nn.Parameter], losses: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int,
              lr: float, desc: str, window: int) -> tuple[float, float]:
    """AdamW with a cosine schedule over ``steps`` calls of ``losses`` (-> the loss to minimise and
    the one to report), with a progress bar; returns the mean reported loss of the first and of
    the last ``window`` steps."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    shown = []
    bar = _bar(steps, desc)
    for _ in bar:
        loss, reported = losses()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        shown.append(reported.item())
        bar.set_postfix(loss=f"{shown[-1]:.4g}", refresh=False)
    head, tail = shown[: min(window, len(shown))], shown[-min(window, len(shown)):]
    return sum(head) / len(head), sum(tail) / len(tail)


def fit_vae(vae: AutoencoderKL, inputs: Iterator[torch.Tensor], steps: int, lr: float = 1e-3,
            kl_weight: float = 1e-6, desc: str = "autoencoder") -> FitResult:
    """Train ``vae`` to reconstruct ``inputs`` (MSE + a small KL, as SD's VAE objective without
    the adversarial and perceptual terms, which a 64-pixel corpus does not need), then set its
    scaling factor to 1 / std of the latents of a last batch. Leaves it frozen in eval mode."""
    vae.train()
    vae.requires_grad_(True)

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        x = next(inputs)
        dist = vae.encode(x).latent_dist
        rec = torch.nn.functional.mse_loss(vae.decode(dist.sample()).sample, x)
        return rec + kl_weight * dist.kl().mean(), rec

    first, last = _optimise(list(vae.parameters()), losses, steps, lr, desc, window=10)
    vae.eval()
    vae.requires_grad_(False)
    with torch.no_grad():
        std = float(vae.encode(next(inputs)).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    return FitResult(steps, first, last, 1.0 / max(std, 1e-6))


def cycle(batches: Iterable[dict], key: str, convert: Callable[[torch.Tensor], torch.Tensor],
          device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Converted ``key`` tensors of ``batches`` on ``device``, round and round."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield convert(batch[key].to(device))
        if empty:
            raise ValueError("no training batches: the corpus is empty")


def pretrain_autoencoders(audio_dir: Path, video_dir: Path, batches: Iterable[dict], data: DataConfig, steps: int,
                          seed: int = 0, lr: float = 1e-3, images_per_step: int = 32,
                          device: torch.device | str = "cpu") -> dict[str, FitResult]:
    """Fit the mel VAE under ``audio_dir``/vae and the image VAE under ``video_dir``/vae on
    ``batches`` (dicts with 'frames' (B, F, H, W, 3) uint8 and 'wave' (B, N)) and save both back
    in place (diffusers layout). The image VAE sees ``images_per_step`` random frames of each
    batch (a batch of 8 four-second clips holds 256 frames; 32 are enough, at an eighth of the cost)."""
    results = {}
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    def some_frames(frames: torch.Tensor) -> torch.Tensor:
        images = frames_to_images(frames)
        return images[torch.randperm(len(images), generator=g)[:images_per_step].to(images.device)]

    video_vae = AutoencoderKL.from_pretrained(video_dir / "vae").to(device)
    results["video"] = fit_vae(video_vae, cycle(batches, "frames", some_frames, device), steps, lr, desc="video VAE")
    video_vae.cpu().save_pretrained(video_dir / "vae")
    audio_vae = AutoencoderKL.from_pretrained(audio_dir / "vae").to(device)
    multiple = 2 ** (len(audio_vae.config.block_out_channels) - 1)
    mels = LogMel(data).to(device)
    results["audio"] = fit_vae(audio_vae, cycle(batches, "wave", lambda w: pad_frames(mels(w), multiple)[:, None],
                                                device), steps, lr, desc="mel VAE")
    audio_vae.cpu().save_pretrained(audio_dir / "vae")
    return results


def _fit_denoiser(forward: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor], params: list[torch.nn.Parameter],
                  batches: Iterator[dict], schedule, steps: int, lr: float, seed: int, desc: str) -> FitResult:
    """The bases' own objective (docs/method.md: epsilon or v prediction, uniform t) on one modality."""
    g = torch.Generator().manual_seed(seed)

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(batches)
        x0 = batch["latents"]
        # Drawn on the CPU, then moved: the same noise on any device.
        t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), generator=g).to(x0.device)
        eps = torch.randn(x0.shape, generator=g).to(x0.device)
        out = forward(schedule.add_noise(x0, eps, t), t, batch)
        loss = torch.nn.functional.mse_loss(out.float(), schedule.target(x0, eps, t).float())
        return loss, loss

    first, last = _optimise(params, losses, steps, lr, desc, window=20)
    return FitResult(steps, first, last, None)


def pretrain_denoisers(cfg, batches: Iterable[dict], steps: int, seed: int = 0, lr: float = 5e-4,
                       device: torch.device | str = "cpu") -> dict[str, FitResult]:
    """Train the audio UNet (AudioLDM: CLAP text embedding as class label) and the video UNet with
    its motion modules (AnimateDiff: CLIP context per frame), each alone, on the latents of the
    fitted autoencoders, then save them back in place: audio/unet, video/unet and the motion
    adapter, each in its diffusers layout. ``cfg`` is the joint config whose model paths name the
    bases (as joint training will load them)."""
    from svgen.diffusion.schedule import Schedule
    from svgen.models.codec import audio_posterior, video_posterior
    from svgen.system import build_system

    torch.manual_seed(seed)
    system = build_system(cfg).to(device)
    audio, video = system.audio, system.video
    g = torch.Generator(device=device).manual_seed(seed + 1)
    encoded = []
    for batch in batches:  # latents drawn once from the frozen autoencoders' posteriors
        captions = list(batch["caption"])
        encoded.append({"a": audio_posterior(audio, batch["wave"].to(device), cfg.data).sample(g),
                        "v": video_posterior(video, batch["frames"].to(device)).sample(g),
                        "text_a": audio.encode_text(captions), "text_v": video.encode_text(captions)})
    if not encoded:
        raise ValueError("no training batches: the corpus is empty")

    def cycle_latents(key: str) -> Iterator[dict]:
        while True:
            for e in encoded:
                yield {**e, "latents": e[key]}

    results = {}
    unet_a = audio.unet
    unet_a.requires_grad_(True).train()
    multiple = audio.unet_downsample

    def audio_forward(z, t, batch):
        extra = (-z.shape[2]) % multiple  # the UNet's downsampling needs whole latent frames
        z = torch.nn.functional.pad(z, (0, 0, 0, extra))
        return unet_a(z, t, None, class_labels=batch["text_a"]).sample[:, :, : batch["a"].shape[2]]

    results["audio"] = _fit_denoiser(audio_forward, list(unet_a.parameters()), cycle_latents("a"),
                                     Schedule(cfg.model.audio.schedule), steps, lr, seed, "audio UNet")
    unet_a.eval().requires_grad_(False)
    unet_a.cpu().save_pretrained(Path(cfg.model.audio.path) / "unet")

    unet_v = video.unet
    unet_v.requires_grad_(True).train()

    def video_forward(z, t, batch):
        context = batch["text_v"].repeat_interleave(z.shape[2], 0)  # one context per frame
        return unet_v(z, t, context).sample

    results["video"] = _fit_denoiser(video_forward, list(unet_v.parameters()), cycle_latents("v"),
                                     Schedule(cfg.model.video.schedule), steps, lr, seed, "video UNet")
    unet_v.eval().requires_grad_(False).cpu()
    # Back to the two checkpoints the real path reads: the SD-layout UNet and the motion adapter.
    from diffusers import UNet2DConditionModel

    spatial = UNet2DConditionModel.from_pretrained(Path(cfg.model.video.path) / "unet")
    state = {k: v for k, v in unet_v.state_dict().items() if "motion_modules" not in k}
    missing, unexpected = spatial.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"the video UNet's spatial weights do not map back to the SD layout: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    spatial.save_pretrained(Path(cfg.model.video.path) / "unet")
    unet_v.save_motion_modules(cfg.model.video.motion_adapter_path)
    return results
