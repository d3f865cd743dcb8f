"""Sampling from exported weights, per-video seeds, and conditional generation (V2A, A2V,
continuation) with the replacement approach."""

import subprocess
import sys

import pytest
import torch

from svgen.config import SampleConfig, to_yaml
from svgen.system import Given
from svgen.models.codec import decode_video, encode_video
from svgen.media.mp4 import probe
from svgen.models.weights import WeightsError, load_trained_weights
from svgen.train.checkpoint import export_weights

from .conftest import ROOT, TINY, tiny_overrides

CFG = SampleConfig(steps=3)


@pytest.fixture(scope="module")
def system(system_factory):
    s = system_factory()
    for blocks in (s.model.blocks_a, s.model.blocks_v):
        for block in blocks.values():
            torch.nn.init.normal_(block.proj_out.weight, std=0.05)
    return s


def _sample(system, b, seeds, given_a=None, given_v=None):
    ta, tv = system.encode_text(["a click"] * b)
    na, nv = system.encode_text([CFG.negative_prompt])
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return system.sample(text=(ta, tv), negative=(na, nv), shapes=((b, 8, 32, 16), (b, 4, 8, 8, 8)), cfg=CFG,
                         generator=gens, progress=False, given_a=given_a, given_v=given_v)


def test_a_video_does_not_depend_on_its_batch(system):
    a1, v1 = _sample(system, 1, [7])
    a2, v2 = _sample(system, 2, [7, 8])
    # Same noise; only float summation order differs with the batch size.
    torch.testing.assert_close(a2[:1], a1, rtol=0, atol=2e-3)
    torch.testing.assert_close(v2[:1], v1, rtol=0, atol=2e-3)
    assert (a2[0] - a2[1]).abs().max() > 0.5  # another seed is another sample


def test_video_to_audio_keeps_the_video(system):
    zv = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    a1, v1 = _sample(system, 1, [1], given_v=Given.whole(zv))
    a2, v2 = _sample(system, 1, [2], given_v=Given.whole(zv))
    assert torch.equal(v1, zv) and torch.equal(v2, zv)   # returned unchanged
    assert not torch.allclose(a1, a2)                      # audio is generated


def test_audio_to_video_keeps_the_audio(system):
    za = torch.randn(1, 8, 32, 16, generator=torch.Generator().manual_seed(1))
    a1, v1 = _sample(system, 1, [1], given_a=Given.whole(za))
    _, v2 = _sample(system, 1, [2], given_a=Given.whole(za))
    assert torch.equal(a1, za) and not torch.allclose(v1, v2)


def test_continuation_keeps_the_prefix(system):
    g = torch.Generator().manual_seed(1)
    za, zv = torch.randn(1, 8, 32, 16, generator=g), torch.randn(1, 4, 8, 8, 8, generator=g)
    a, v = _sample(system, 1, [1], given_a=Given.prefix(za, 0.5), given_v=Given.prefix(zv, 0.5))
    assert torch.equal(a[:, :, :16], za[:, :, :16]) and torch.equal(v[:, :, :4], zv[:, :, :4])
    assert not torch.allclose(a[:, :, 16:], za[:, :, 16:]) and not torch.allclose(v[:, :, 4:], zv[:, :, 4:])


def test_given_video_survives_the_vae_round_trip(system):
    """What V2A returns for the video is the input clip up to one VAE encode/decode."""
    frames = (torch.rand(1, 8, 64, 64, 3) * 255).to(torch.uint8)
    zv = encode_video(system.video, frames)
    _, v = _sample(system, 1, [0], given_v=Given.whole(zv))
    assert torch.equal(decode_video(system.video, v), decode_video(system.video, zv))


@pytest.mark.multiprocess
def test_sample_cli_from_exported_weights(system, tiny_cfg, tmp_path, tiny_bases):
    cfg = tiny_cfg()
    weights = {n: p.detach().float() for n, p in system.model.named_parameters()}
    path = export_weights(tmp_path / "w.safetensors", weights, {"config": to_yaml(cfg)})
    out = tmp_path / "samples"
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "sample.py"), "--weights", str(path), "--num", "3",
                           "--batch-size", "2", "--steps", "2", "--prompt", "a click", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mp4s = sorted(out.glob("*.mp4"))
    assert len(mp4s) == 3
    assert {s["type"] for s in probe(mp4s[0])["streams"]} == {"video", "audio"}
    # Weights from another model config are refused by name.
    other = tiny_cfg("model.cmcpe.depth=2")
    from svgen.system import build_system

    with pytest.raises(WeightsError, match="does not fit this model"):
        load_trained_weights(build_system(other).model, path)
