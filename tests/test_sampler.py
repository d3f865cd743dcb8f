import dataclasses

import pytest
import torch

from svgen.config import SampleConfig
from svgen.generate import generate


@pytest.fixture(scope="module")
def system(system_factory):
    s = system_factory()
    for blocks in (s.model.blocks_a, s.model.blocks_v):  # make the cross-modal path active
        for block in blocks.values():
            torch.nn.init.normal_(block.proj_out.weight, std=0.05)
    return s


def _sample(system, cfg, seed):
    ta, tv = system.encode_text(["a red square flashes with a click"])
    na, nv = system.encode_text([cfg.negative_prompt])
    g = torch.Generator().manual_seed(seed)
    return system.sample(text=(ta, tv), negative=(na, nv), shapes=((1, 8, 32, 16), (1, 4, 8, 8, 8)), cfg=cfg,
                         generator=g, progress=False)


def test_deterministic_per_seed(system):
    cfg = SampleConfig(steps=4)
    a1, v1 = _sample(system, cfg, 0)
    a2, v2 = _sample(system, cfg, 0)
    a3, v3 = _sample(system, cfg, 1)
    assert torch.equal(a1, a2) and torch.equal(v1, v2)
    assert not torch.allclose(a1, a3) and not torch.allclose(v1, v3)


def test_guidance_and_gamma_change_the_result(system):
    base = SampleConfig(steps=4, gamma=1.0)
    a0, v0 = _sample(system, base, 0)
    a1, v1 = _sample(system, dataclasses.replace(base, gamma=1.5), 0)
    assert not torch.allclose(a0, a1) and not torch.allclose(v0, v1)
    a2, v2 = _sample(system, dataclasses.replace(base, guidance_audio=1.0, guidance_video=1.0), 0)
    assert not torch.allclose(v0, v2)  # per-modality scales: test_guidance_scales_act_per_modality


def test_guidance_scales_act_per_modality(system_factory):
    """With the cross-modal path closed (the untrained model: zero-init output projections) each
    guidance scale must move its own modality only, bit for bit."""
    closed = system_factory()
    base = SampleConfig(steps=3, gamma=1.5)
    a0, v0 = _sample(closed, base, 0)
    a1, v1 = _sample(closed, dataclasses.replace(base, guidance_audio=6.0), 0)
    assert torch.equal(v0, v1) and not torch.allclose(a0, a1)
    a2, v2 = _sample(closed, dataclasses.replace(base, guidance_video=2.0), 0)
    assert torch.equal(a0, a2) and not torch.allclose(v0, v2)


def test_generate_decodes_frames_and_waveform(system, tiny_cfg):
    cfg = tiny_cfg()
    frames, wave = generate(system, ["a", "b"], cfg.data, SampleConfig(steps=2), progress=False)
    assert frames.shape == (2, cfg.data.num_frames, cfg.data.size, cfg.data.size, 3) and frames.dtype == torch.uint8
    assert wave.shape == (2, cfg.data.num_samples) and torch.isfinite(wave).all()
