"""The ablation's tiny pre-trained bases (issue 12): the autoencoder stage learns the hits corpus
and is saved where, and as, the real loading path reads it."""

import numpy as np
import torch
from diffusers import AutoencoderKL

from experiments.ablation.bases import frames_to_images, pretrain_autoencoders, pretrain_denoisers, waves_to_mels
from experiments.ablation.hits import Spec, make_clip
from svgen.config import load_config
from svgen.models.codec import audio_posterior, video_posterior
from svgen.models.tiny import build_tiny_bases
from svgen.system import build_system

from .conftest import MEDIA_SOUNDS as MEDIA
from .conftest import TINY, tiny_overrides


def _batch(spec: Spec, first: int, n: int = 4) -> dict:
    clips = [make_clip(0, i, spec, MEDIA) for i in range(first, first + n)]
    return {"frames": torch.from_numpy(np.stack([c.frames for c in clips])),
            "wave": torch.from_numpy(np.stack([c.wave for c in clips]))}


def _error(vae_dir, x: torch.Tensor) -> float:
    vae = AutoencoderKL.from_pretrained(vae_dir)
    with torch.no_grad():
        return torch.nn.functional.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x).item()


def test_autoencoders_learn_the_corpus_and_load_as_real_bases(tmp_path):
    bases = build_tiny_bases(tmp_path / "bases")
    cfg = load_config(TINY, tiny_overrides(bases) + ["model.audio.vocoder=griffin_lim"])
    spec = Spec(seconds=cfg.data.seconds, fps=cfg.data.fps, size=cfg.data.size)
    train = [_batch(spec, 4 * i) for i in range(8)]
    held_out = _batch(spec, 10_000)
    frames, mels = frames_to_images(held_out["frames"]), waves_to_mels(held_out["wave"], cfg.data, 4)
    before = (_error(bases["video"] / "vae", frames), _error(bases["audio"] / "vae", mels))

    fits = pretrain_autoencoders(bases["audio"], bases["video"], train, cfg.data, steps=150)
    after = (_error(bases["video"] / "vae", frames), _error(bases["audio"] / "vae", mels))
    assert after[0] < 0.2 * before[0] and after[1] < 0.6 * before[1], (before, after)  # on clips never seen
    assert fits["video"].loss_last < fits["video"].loss_first

    # The real loading path reads them, and the scaling factor gives training latents of unit scale.
    system = build_system(cfg)
    assert system.audio.vocoder is None
    z_v = video_posterior(system.video, held_out["frames"]).mean
    z_a = audio_posterior(system.audio, held_out["wave"], cfg.data).mean
    assert 0.5 < float(z_v.std()) < 2.0 and 0.5 < float(z_a.std()) < 2.0
    assert system.video.vae.config.scaling_factor == fits["video"].scaling_factor


def test_denoisers_train_alone_and_save_back_to_both_video_checkpoints(tmp_path):
    """The UNets learn their own modality's denoising, then the spatial UNet and the motion
    adapter go back to their own diffusers folders, and joint training's loader reads them."""
    bases = build_tiny_bases(tmp_path / "bases")
    cfg = load_config(TINY, tiny_overrides(bases) + ["model.audio.vocoder=griffin_lim"])
    spec = Spec(seconds=cfg.data.seconds, fps=cfg.data.fps, size=cfg.data.size)
    train = []
    for i in range(4):
        b = _batch(spec, 4 * i)
        b["caption"] = [make_clip(0, j, spec, MEDIA).caption for j in range(4 * i, 4 * i + 4)]
        train.append(b)
    pretrain_autoencoders(bases["audio"], bases["video"], train, cfg.data, steps=40)
    before = build_system(cfg)
    fits = pretrain_denoisers(cfg, train, steps=60)
    for modality in ("audio", "video"):
        assert fits[modality].loss_last < 0.9 * fits[modality].loss_first, fits
    after = build_system(cfg)
    for name in ("audio", "video"):
        old = dict(getattr(before, name).unet.named_parameters())
        new = dict(getattr(after, name).unet.named_parameters())
        changed = [n for n in old if not torch.equal(old[n], new[n])]
        assert len(changed) > 0.5 * len(old), name
        if name == "video":  # both halves moved: the SD-layout UNet and the motion adapter
            assert any("motion_modules" in n for n in changed) and any("motion_modules" not in n for n in changed)
