"""The block runners reproduce the plain diffusers forward (no adapters)."""

import pytest
import torch

from svgen.models.bases import load_audio_base, load_video_base
from svgen.models.unet_runner import AudioUNetRunner, VideoUNetRunner


@pytest.fixture(scope="module")
def bases(tiny_bases):
    return (load_audio_base(tiny_bases["audio"]),
            load_video_base(tiny_bases["video"], tiny_bases["motion_adapter"]))


@pytest.mark.parametrize("t_len", [32, 25])  # 25: not a multiple of 8, exercises upsample_size
def test_audio_runner_matches_diffusers(bases, t_len):
    audio, _ = bases
    torch.manual_seed(0)
    z = torch.randn(2, 8, t_len, 16)
    t = torch.tensor([3, 771])
    text = audio.encode_text(["a", "b"])
    ref = audio.unet(z, t, None, class_labels=text).sample
    out = AudioUNetRunner(audio.unet).run(z, t, text)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("frames,size", [(8, 8), (5, 12)])
def test_video_runner_matches_diffusers(bases, frames, size):
    _, video = bases
    torch.manual_seed(0)
    z = torch.randn(2, 4, frames, size, size)
    t = torch.tensor([999, 10])
    text = video.encode_text(["a", "b"])
    ref = video.unet(z, t, text.repeat_interleave(frames, dim=0)).sample
    out = VideoUNetRunner(video.unet).run(z, t, text)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_common_layout_round_trip(bases):
    audio, video = bases
    rv, ra = VideoUNetRunner(video.unet), AudioUNetRunner(audio.unet)
    z = torch.randn(2, 4, 6, 8, 8)
    st = rv.begin(z, torch.tensor([5, 5]), video.encode_text(["a", "b"]))
    x = rv.to_btcs(st.h, st)
    assert x.shape == (2, st.h.shape[1], 6, 64)
    # Frame k of sample b in the UNet layout is row b*F + k: the time axis really is time.
    torch.testing.assert_close(x[1, :, 4], st.h[1 * 6 + 4].reshape(st.h.shape[1], -1))
    torch.testing.assert_close(rv.from_btcs(x, st, st.h), st.h)
    sa = ra.begin(torch.randn(2, 8, 32, 16), torch.tensor([1, 2]), audio.encode_text(["a", "b"]))
    torch.testing.assert_close(ra.from_btcs(ra.to_btcs(sa.h, sa), sa, sa.h), sa.h)
