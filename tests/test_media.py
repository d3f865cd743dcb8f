import numpy as np
import pytest
import torch

from svgen.data.synthetic import make_clip
from svgen.media.audio import LOG_FLOOR, LogMel, pad_frames
from svgen.models.codec import decode_audio, decode_video, encode_audio, encode_video, latent_shapes
from svgen.media.mp4 import probe, read_mp4, write_mp4

from .conftest import yuv420p_round_trip


def test_mp4_has_one_h264_and_one_aac_stream_of_the_right_length(tmp_path, tiny_cfg):
    data = tiny_cfg("data.seconds=2.0").data
    clip = make_clip(data, seed=3)
    path = write_mp4(tmp_path / "a.mp4", clip.frames, fps=data.fps, wave=clip.wave, sample_rate=data.sample_rate)
    info = probe(path)
    kinds = sorted(s["type"] for s in info["streams"])
    assert kinds == ["audio", "video"]
    v = next(s for s in info["streams"] if s["type"] == "video")
    a = next(s for s in info["streams"] if s["type"] == "audio")
    assert v["codec"] == "h264" and a["codec"] == "aac"
    assert v["frames"] == data.num_frames and v["duration"] == pytest.approx(2.0, abs=1 / data.fps)
    assert a["duration"] == pytest.approx(2.0, abs=0.05) and a["sample_rate"] == data.sample_rate
    assert not (tmp_path / ".a.mp4.tmp").exists()


def test_a_lossless_mp4_decodes_to_exactly_its_frames_yuv420p(tmp_path, tiny_cfg):
    # What makes a benchmark corpus bit-reproducible: the decoded pixels do not depend on x264's
    # choices, which vary from one encode to the next at crf 18.
    data = tiny_cfg("data.seconds=2.0").data
    clip = make_clip(data, seed=3)
    frames = np.asarray(clip.frames)
    want = yuv420p_round_trip(frames)
    lossless, wave, _ = read_mp4(write_mp4(tmp_path / "l.mp4", frames, fps=data.fps, wave=clip.wave,
                                           sample_rate=data.sample_rate, lossless=True), data.sample_rate)
    assert np.array_equal(lossless, want)
    assert wave.shape[0] == pytest.approx(2.0 * data.sample_rate, abs=0.05 * data.sample_rate)
    lossy, _, _ = read_mp4(write_mp4(tmp_path / "c.mp4", frames, fps=data.fps, wave=clip.wave,
                                     sample_rate=data.sample_rate), data.sample_rate)
    assert not np.array_equal(lossy, want)  # the test can tell: crf 18 does not give the pixels back


def test_mp4_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "b.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=8, wave=np.zeros(100, np.float32),
                  sample_rate=16000)


def test_synthetic_clip_flash_and_click_coincide(tiny_cfg):
    data = tiny_cfg().data
    clip = make_clip(data, seed=5)
    brightness = clip.frames.reshape(clip.frames.shape[0], -1).mean(1)
    flash_frames = np.flatnonzero(brightness > brightness.min() + 5)
    env = np.abs(clip.wave)
    clicks = [i for i in range(0, len(env), data.sample_rate // data.fps) if env[i:i + 80].max() > 0.3]
    assert [round(e * data.fps) for e in clip.events] == flash_frames.tolist()
    assert [round(i / data.sample_rate * data.fps) for i in clicks] == flash_frames.tolist()


def test_log_mel_matches_method_settings(tiny_cfg):
    data = tiny_cfg("data.seconds=4.0").data
    mel = LogMel(data)(torch.zeros(2, data.num_samples))
    assert mel.shape == (2, 400, 64)  # 4 s at hop 160 -> 400 frames of 64 bins
    assert torch.allclose(mel, torch.full_like(mel, LOG_FLOOR))  # silence sits at log(1e-5)
    padded = pad_frames(mel, 32)
    assert padded.shape[1] == 416 and torch.all(padded[:, 400:] == LOG_FLOOR)


def test_posterior_samples_spread_around_the_mean(system_factory, tiny_cfg):
    """Training latents are drawn from the VAE posterior (docs/method.md, "Training (one step)" step 5), not its mode."""
    from svgen.models.codec import audio_posterior, video_posterior

    system = system_factory()
    data = tiny_cfg().data
    clip = make_clip(data, seed=0)
    for post in (audio_posterior(system.audio, torch.from_numpy(clip.wave)[None], data),
                 video_posterior(system.video, torch.from_numpy(clip.frames)[None])):
        assert (post.std > 0).all()
        draws = torch.stack([post.sample(torch.Generator().manual_seed(s)) for s in range(64)])
        assert not torch.equal(draws[0], draws[1])
        torch.testing.assert_close(draws.mean(0), post.mean, atol=float(4 * post.std.max() / 8), rtol=0)
        torch.testing.assert_close(draws.std(0), post.std, atol=float(0.3 * post.std.max()), rtol=0.3)


def test_codec_round_trip_shapes(system_factory, tiny_cfg):
    system = system_factory()
    data = tiny_cfg().data
    clip = make_clip(data, seed=0)
    za = encode_audio(system.audio, torch.from_numpy(clip.wave)[None], data)
    zv = encode_video(system.video, torch.from_numpy(clip.frames)[None])
    shape_a, shape_v = latent_shapes(system.audio, system.video, data, 1)
    assert tuple(za.shape) == shape_a and tuple(zv.shape) == shape_v
    assert shape_a[2] == data.mel_frames // system.audio.vae_scale  # the clip's own length: no padding here
    frames = decode_video(system.video, zv)
    wave = decode_audio(system.audio, za, data.num_samples)
    assert frames.shape == (1, data.num_frames, data.size, data.size, 3)
    assert wave.shape == (1, data.num_samples)


def _bursts(sr: int, onsets: list[float], seconds: float = 2.0) -> torch.Tensor:
    import math

    w = torch.randn(int(seconds * sr), generator=torch.Generator().manual_seed(0)) * 0.002
    t = torch.arange(int(0.08 * sr)) / sr
    burst = torch.sin(2 * math.pi * 800 * t) * torch.exp(-t / 0.02)
    for o in onsets:
        i = int(o * sr)
        w[i:i + len(burst)] += burst
    return w


def test_griffin_lim_keeps_the_onsets_and_the_spectrum(tiny_cfg):
    """The vocoder of bases without a trained one: a log-mel inverted and analysed again stays
    close, and each burst still starts where it did (within a frame)."""
    from svgen.media.audio import log_mel, mel_to_wave

    d = tiny_cfg().data
    onsets = [0.25, 0.8, 1.5]
    settings = {"sample_rate": d.sample_rate, "n_mels": d.n_mels, "hop_length": d.hop_length, "win_length": d.win_length,
                "fmax": d.fmax}
    mel = log_mel(_bursts(d.sample_rate, onsets), **settings)
    wave = mel_to_wave(mel, **settings)
    again = log_mel(wave, **settings)
    assert (again - mel[: again.shape[0]]).abs().mean() < 0.2                    # log units; silence is -11.5
    env = wave.abs().unfold(0, d.hop_length, d.hop_length).amax(1)
    for o in onsets:
        k = int(o * d.sample_rate / d.hop_length)
        assert env[k:k + 2].max() > 10 * env[k - 4], o


def test_an_audio_base_without_vocoder_decodes_with_griffin_lim(tiny_bases, tmp_path):
    import shutil

    from svgen.config import load_config
    from svgen.models.bases import BaseModelError
    from svgen.system import build_system

    from .conftest import TINY, tiny_overrides

    audio = tmp_path / "audioldm"
    shutil.copytree(tiny_bases["audio"], audio, ignore=shutil.ignore_patterns("vocoder"))
    sets = tiny_overrides(tiny_bases) + [f"model.audio.path={audio}"]
    with pytest.raises(BaseModelError, match="vocoder"):
        build_system(load_config(TINY, sets))
    cfg = load_config(TINY, sets + ["model.audio.vocoder=griffin_lim"])
    system = build_system(cfg)
    assert system.audio.vocoder is None
    za = encode_audio(system.audio, _bursts(cfg.data.sample_rate, [0.3], cfg.data.seconds)[None], cfg.data)
    wave = decode_audio(system.audio, za, cfg.data.num_samples, cfg.data)
    assert wave.shape == (1, cfg.data.num_samples) and torch.isfinite(wave).all() and wave.abs().max() > 0
    with pytest.raises(ValueError, match="griffin_lim"):
        decode_audio(system.audio, za, cfg.data.num_samples)
