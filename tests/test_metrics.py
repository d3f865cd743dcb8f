"""AV-Align on clips with known sync and on a real click; Fréchet distance maths and plumbing."""

import numpy as np
import pytest
import torch

from data_prep.audio import decode_audio_span
from svgen.metrics.av_align import audio_onsets, av_align, motion_peaks
from svgen.metrics.fad import FeatureWeightsError, VGGish, frechet_distance, load_vggish, vggish_embeddings

from .conftest import ROOT

FPS, SR, N = 8, 16000, 32
EVENTS = [0.5, 1.25, 2.0, 3.0]


def _clip(shift=0.0):
    """A square jumps between two places at each event; a click sounds at event + shift."""
    frames = np.zeros((N, 64, 64, 3), np.uint8)
    wave = np.zeros(int(N / FPS * SR), np.float32)
    pos = 8
    for k in range(N):
        if any(abs(k / FPS - e) < 1e-6 for e in EVENTS):
            pos = 40 if pos == 8 else 8
        frames[k, pos:pos + 16, pos:pos + 16] = 255
    t = np.arange(int(0.01 * SR)) / SR
    click = np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.003)
    for e in EVENTS:
        i = int((e + shift) * SR)
        if 0 <= i < len(wave):
            wave[i:i + len(click)] += click[: len(wave) - i]
    return frames, wave


def test_av_align_synced_vs_shifted():
    frames, wave = _clip()
    assert motion_peaks(frames, FPS) == pytest.approx(EVENTS)
    assert audio_onsets(wave, SR) == pytest.approx(EVENTS, abs=1 / FPS)
    assert av_align(frames, wave, FPS, SR)["av_align"] == pytest.approx(1.0)
    frames, wave = _clip(shift=0.5)
    assert av_align(frames, wave, FPS, SR)["av_align"] < 0.1


def test_dual_discs_click():
    wave = decode_audio_span(str(ROOT.parent / "shared" / "media" / "video" / "07_psychtoolbox_DualDiscs.mov"), 0.0, 2.5, SR)
    onsets = audio_onsets(wave, SR)
    assert len(onsets) >= 1 and np.min(np.abs(onsets - 1.43)) < 0.06


def test_frechet_distance_maths():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # Two Gaussians with known parameters: ||dmu||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)).
    y = rng.standard_normal((20000, 3)) * 2.0 + 1.0
    z = rng.standard_normal((20000, 3))
    assert frechet_distance(y, z) == pytest.approx(3 * 1.0 + 3 * (4 + 1 - 2 * 2), rel=0.05)


def test_fad_grows_with_noise(tmp_path):
    torch.manual_seed(0)
    net = VGGish(width=1 / 16)
    torch.save(net.state_dict(), tmp_path / "vggish.pt")
    net = load_vggish(tmp_path / "vggish.pt")  # the width is read from the file
    rng = np.random.default_rng(0)
    clips = [np.sin(2 * np.pi * f * np.arange(SR * 2) / SR).astype(np.float32) * 0.5 for f in np.linspace(200, 2000, 12)]
    ref = np.concatenate([vggish_embeddings(net, c) for c in clips])
    assert frechet_distance(ref, ref) == pytest.approx(0.0, abs=1e-6)
    dists = []
    for level in (0.01, 0.1, 0.5):
        noisy = np.concatenate([vggish_embeddings(net, c + level * rng.standard_normal(len(c)).astype(np.float32))
                                for c in clips])
        dists.append(frechet_distance(ref, noisy))
    assert 0 < dists[0] < dists[1] < dists[2]


def test_missing_feature_weights_name_the_file(tmp_path):
    with pytest.raises(FeatureWeightsError, match="vggish_path"):
        load_vggish(tmp_path / "nope.pt")
