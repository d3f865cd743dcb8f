"""AV-Align (the reference's estimator) on clips with known sync, on silence, and on real clips
against librosa and OpenCV called directly; Fréchet distance maths and plumbing."""

import numpy as np
import pytest
import torch

from data_prep.audio import decode_audio_span
from svgen.metrics.av_align import audio_onsets, av_align, match_score, motion_peaks
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
    synced = av_align(frames, wave, FPS, SR)["av_align"]
    assert synced == pytest.approx(1.0)
    frames, wave = _clip(shift=0.5)
    delayed = av_align(frames, wave, FPS, SR)
    assert delayed["onsets"] > 0 and delayed["peaks"] > 0  # both sides found events...
    assert delayed["av_align"] == 0.0                      # ...none within 1/fps: 0, not NaN


def test_silent_static_clip_scores_zero():
    """No onsets and no peaks is not perfect sync: a collapsed model must not score 1."""
    frames = np.full((N, 64, 64, 3), 90, np.uint8)
    r = av_align(frames, np.zeros(int(N / FPS * SR), np.float32), FPS, SR)
    assert r == {"av_align": 0.0, "onsets": 0, "peaks": 0}


def test_matching_is_an_open_interval_counted_both_ways():
    assert match_score(np.array([1.0]), np.array([1.0 + 1 / FPS]), FPS) == 0.0       # exactly 1/fps: no match
    assert match_score(np.array([1.0]), np.array([1.0 + 0.9 / FPS]), FPS) == 1.0
    # 2 onsets, 1 matched (p = 1/2); 1 peak, matched (r = 1): p r / (p + r - p r) = 0.5
    assert match_score(np.array([1.0, 2.0]), np.array([1.05]), FPS) == pytest.approx(0.5)
    assert match_score(np.array([]), np.array([1.0]), FPS) == 0.0


def _decode_all(path):
    """Every frame (RGB, full resolution) and the mono audio of a media file, with PyAV."""
    import av

    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].codec_context.sample_rate
        chunks = [f.to_ndarray().reshape(f.layout.nb_channels, -1) if f.format.is_planar
                  else f.to_ndarray().reshape(-1, f.layout.nb_channels).T for f in c.decode(audio=0)]
    wave = np.concatenate(chunks, axis=1).astype(np.float32)
    if np.issubdtype(chunks[0].dtype, np.integer):
        wave = wave / float(np.iinfo(chunks[0].dtype).max)
    return frames, wave.mean(axis=0), fps, rate


@pytest.mark.parametrize("name", ["07_psychtoolbox_DualDiscs.mov", "05_kphotoalbum_movie.avi"])
def test_real_clips_match_librosa_and_opencv_called_directly(name):
    import cv2
    import librosa

    frames, wave, fps, rate = _decode_all(ROOT.parent / "shared" / "media" / "video" / name)
    ours = av_align(frames, wave, fps, rate)
    # The reference's estimator, spelled out with docs/method.md's parameters.
    y = librosa.resample(wave, orig_sr=rate, target_sr=22050)
    onsets = librosa.frames_to_time(librosa.onset.onset_detect(
        onset_envelope=librosa.onset.onset_strength(y=y, sr=22050), sr=22050), sr=22050)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    mags = []
    for a, b in [(grey[0], grey[1])] + [(grey[i - 1], grey[i]) for i in range(1, len(grey))]:
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(cv2.mean(cv2.magnitude(flow[..., 0], flow[..., 1]))[0])
    peaks = [i / fps for i in range(1, len(mags) - 1) if mags[i - 1] < mags[i] > mags[i + 1]]
    hit_a = sum(any(p - 1 / fps < o < p + 1 / fps for p in peaks) for o in onsets)
    hit_v = sum(any(o - 1 / fps < p < o + 1 / fps for o in onsets) for p in peaks)
    p1 = hit_a / len(onsets) if len(onsets) else 0
    p2 = hit_v / len(peaks) if len(peaks) else 0
    expected = p1 * p2 / (p1 + p2 - p1 * p2) if p1 > 0 or p2 > 0 else 0.0
    assert (ours["onsets"], ours["peaks"]) == (len(onsets), len(peaks)) and len(onsets) > 0 and len(peaks) > 0
    assert ours["av_align"] == pytest.approx(expected, abs=1e-12)


def test_dual_discs_click():
    wave = decode_audio_span(str(ROOT.parent / "shared" / "media" / "video" / "07_psychtoolbox_DualDiscs.mov"), 0.0, 2.5, SR).wave
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
