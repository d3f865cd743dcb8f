import numpy as np
import pytest
import torch

from svgen.data.synthetic import make_clip
from svgen.media.audio import LOG_FLOOR, LogMel, pad_frames
from svgen.models.codec import decode_audio, decode_video, encode_audio, encode_video, latent_shapes
from svgen.media.mp4 import probe, write_mp4


def test_mp4_has_one_h264_and_one_aac_stream_of_the_right_length(tmp_path, tiny_cfg):
    data = tiny_cfg("data.seconds=2.0").data
    clip = make_clip(data, seed=3)
    path = write_mp4(tmp_path / "a.mp4", clip.frames, data.fps, clip.wave, data.sample_rate)
    info = probe(path)
    kinds = sorted(s["type"] for s in info["streams"])
    assert kinds == ["audio", "video"]
    v = next(s for s in info["streams"] if s["type"] == "video")
    a = next(s for s in info["streams"] if s["type"] == "audio")
    assert v["codec"] == "h264" and a["codec"] == "aac"
    assert v["frames"] == data.num_frames and v["duration"] == pytest.approx(2.0, abs=1 / data.fps)
    assert a["duration"] == pytest.approx(2.0, abs=0.05) and a["sample_rate"] == data.sample_rate
    assert not (tmp_path / ".a.mp4.tmp").exists()


def test_mp4_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "b.mp4", np.zeros((2, 8, 8, 3), np.float32), 8, np.zeros(100, np.float32), 16000)


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
    """Training latents are drawn from the VAE posterior (METHOD.md step 5), not its mode."""
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
