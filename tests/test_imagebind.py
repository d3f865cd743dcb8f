"""The ImageBind score (issue 22): svgen's encoders in the layout of the released
imagebind_huge.pth, ImageBind's preprocessing, and the metric through launch/eval.py. A narrow
network with random weights is saved in that layout (the real weights are CC-BY-NC and never
shipped)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svgen.metrics.imagebind import (AUDIO_MEAN, AUDIO_STD, CLIP_MEAN, CLIP_STD, ImageBind, ImageBindError, Sizes,
                                     audio_views, clip_windows, ib_score, load_imagebind, sizes_of, video_views)
from svgen.metrics.weights import FeatureWeightsError

NARROW = Sizes(vision_dim=160, vision_depth=1, audio_dim=64, audio_depth=1, out_dim=32)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    net = ImageBind(NARROW)
    for p in net.parameters():  # random, not zero: the tokens must carry something
        torch.nn.init.normal_(p, std=0.05)
    state = dict(net.state_dict())
    # The released file holds every modality; the score's loader must skip the others.
    state["modality_preprocessors.text.token_embedding.weight"] = torch.zeros(10, 8)
    state["modality_trunks.depth.blocks.0.norm_1.weight"] = torch.ones(8)
    state["modality_postprocessors.audio.1.log_logit_scale"] = torch.tensor(math.log(20.0))
    path = tmp_path_factory.mktemp("imagebind") / "imagebind_huge.pth"
    torch.save(state, path)
    return path


def test_the_checkpoint_layout_and_sizes():
    full = ImageBind().state_dict()
    # Names and shapes as imagebind_huge.pth holds them.
    want = {"modality_preprocessors.vision.cls_token": (1, 1, 1280),
            "modality_preprocessors.vision.rgbt_stem.proj.1.weight": (1280, 3, 2, 14, 14),
            "modality_preprocessors.vision.pos_embedding_helper.pos_embed": (1, 257, 1280),
            "modality_preprocessors.audio.rgbt_stem.proj.weight": (768, 1, 16, 16),
            "modality_preprocessors.audio.rgbt_stem.norm_layer.weight": (768,),
            "modality_preprocessors.audio.pos_embedding_helper.pos_embed": (1, 229, 768),
            "modality_trunks.vision.pre_transformer_layer.0.weight": (1280,),
            "modality_trunks.vision.blocks.31.attn.in_proj_weight": (3840, 1280),
            "modality_trunks.vision.blocks.0.mlp.fc1.weight": (5120, 1280),
            "modality_trunks.audio.blocks.11.attn.bias_k": (1, 1, 768),
            "modality_trunks.audio.blocks.0.attn.out_proj.weight": (768, 768),
            "modality_trunks.audio.blocks.0.norm_2.bias": (768,),
            "modality_heads.vision.0.weight": (1280,), "modality_heads.vision.2.weight": (1024, 1280),
            "modality_heads.audio.2.weight": (1024, 768)}
    for k, shape in want.items():
        assert tuple(full[k].shape) == shape, k
    assert "modality_trunks.audio.pre_transformer_layer.0.weight" not in full       # the audio trunk has none
    assert "modality_trunks.vision.blocks.0.attn.bias_k" not in full
    assert sizes_of(full) == Sizes() and sizes_of(ImageBind(NARROW).state_dict()) == NARROW
    assert Sizes().vision_heads == 16 and Sizes().audio_heads == 12


def test_windows_follow_imagebinds_sampler():
    # 5 windows of 2 s over 4 s start every 0.5 s; 3 over 6 s every 2 s; a 2 s clip is one window repeated.
    assert clip_windows(4.0, 5) == [(0.0, 2.0), (0.5, 2.5), (1.0, 3.0), (1.5, 3.5), (2.0, 4.0)]
    assert clip_windows(6.0, 3) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    assert clip_windows(2.0, 3) == [(0.0, 2.0)] * 3


def test_video_views_by_hand():
    fps = 8.0
    frames = np.zeros((32, 120, 160, 3), np.uint8)           # 4 s, landscape
    for k in range(32):
        frames[k] = k * 7
    frames[:, :, :40] = 250                                  # a bright left band: tells the crops apart
    v = video_views(frames, fps)
    assert v.shape == (15, 3, 2, 224, 224)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    # Window w (start 0.5 w s) shows frames 4w .. 4w + 15; its views hold the first and the last.
    for w in range(5):
        for t, k in ((0, 4 * w), (1, 4 * w + 15)):
            centre = v[3 * w + 1, :, t, 100:120, 100:120].mean((1, 2))      # the centre crop, away from the band
            assert torch.allclose(centre, (k * 7 / 255.0 - mean) / std, atol=2e-3), (w, t)
    # Scaled to a 224 short side (298 x 224), the left crop holds the band, the right one does not.
    left, right = v[0, 0, 0, :, :5].mean(), v[2, 0, 0, :, -5:].mean()
    assert left.item() == pytest.approx((250 / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0], abs=2e-2)
    assert right.item() == pytest.approx((0 - CLIP_MEAN[0]) / CLIP_STD[0], abs=2e-2)


def test_audio_views_by_hand():
    import torchaudio

    rate = 16000
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(6 * rate) * 0.1).astype(np.float32)
    a = audio_views(wave, rate)
    assert a.shape == (3, 1, 128, 204)
    # Window 1 is 2-4 s: the mean removed, Kaldi fbank, 198 frames then zero-padded to 204, normalised.
    seg = torch.from_numpy(wave[2 * rate:4 * rate])
    fb = torchaudio.compliance.kaldi.fbank((seg - seg.mean())[None], htk_compat=True, sample_frequency=rate,
                                           use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
                                           frame_length=25, frame_shift=10).T
    assert fb.shape == (128, 198)
    assert torch.allclose(a[1, 0, :, :198], (fb - AUDIO_MEAN) / AUDIO_STD, atol=1e-5)
    assert torch.allclose(a[1, 0, :, 198:], torch.full((128, 6), -AUDIO_MEAN / AUDIO_STD), atol=1e-6)
    # Another rate is resampled to 16 kHz first.
    assert audio_views(wave[::2].copy(), 8000).shape == (3, 1, 128, 204)


def test_the_encoder_against_the_formula(weights):
    """One audio view through the narrow network, written out by hand: patch conv + LayerNorm,
    class token and positions, one block whose attention also sees the learnt bias key/value,
    the head's LayerNorm on the class token, projection, unit length."""
    net = load_imagebind(weights)
    x = audio_views((np.random.default_rng(1).standard_normal(32000) * 0.1).astype(np.float32), 16000)[:1]
    sd = {k: v for k, v in net.state_dict().items()}
    p = "modality_preprocessors.audio."
    t = F.conv2d(x, sd[p + "rgbt_stem.proj.weight"], stride=10).flatten(2).transpose(1, 2)
    t = F.layer_norm(t, (64,), sd[p + "rgbt_stem.norm_layer.weight"], sd[p + "rgbt_stem.norm_layer.bias"])
    t = torch.cat([sd[p + "cls_token"], t], 1) + sd[p + "pos_embedding_helper.pos_embed"]
    b = "modality_trunks.audio.blocks.0."
    h = F.layer_norm(t, (64,), sd[b + "norm_1.weight"], sd[b + "norm_1.bias"], eps=1e-6)
    q, k, v = (h @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"]).chunk(3, -1)
    k = torch.cat([k, sd[b + "attn.bias_k"]], 1)
    v = torch.cat([v, sd[b + "attn.bias_v"]], 1)
    att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(64), -1) @ v
    t = t + att @ sd[b + "attn.out_proj.weight"].T + sd[b + "attn.out_proj.bias"]
    h = F.layer_norm(t, (64,), sd[b + "norm_2.weight"], sd[b + "norm_2.bias"], eps=1e-6)
    t = t + F.gelu(h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]) @ sd[b + "mlp.fc2.weight"].T \
        + sd[b + "mlp.fc2.bias"]
    c = F.layer_norm(t[:, 0], (64,), sd["modality_heads.audio.0.weight"], sd["modality_heads.audio.0.bias"], eps=1e-6)
    want = F.normalize(c @ sd["modality_heads.audio.2.weight"].T, dim=-1)
    with torch.no_grad():
        got = net.embed("audio", x)
    assert torch.allclose(got, want, atol=1e-5)


def test_the_score_is_the_cosine_of_the_mean_embeddings(weights):
    net = load_imagebind(weights)
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 255, (32, 64, 80, 3), dtype=np.uint8)     # 4 s at 8 fps
    wave = (rng.standard_normal(4 * 16000) * 0.1).astype(np.float32)
    s = ib_score(net, frames, wave, fps=8.0, rate=16000)
    with torch.no_grad():
        v = net.embed("vision", video_views(frames, 8.0)).mean(0)
        a = net.embed("audio", audio_views(wave, 16000)).mean(0)
    assert s == pytest.approx(float(v @ a / (v.norm() * a.norm())), abs=1e-6) and -1.0 <= s <= 1.0
    other = ib_score(net, frames, (rng.standard_normal(4 * 16000) * 0.5).astype(np.float32), fps=8.0, rate=16000)
    assert other != pytest.approx(s, abs=1e-6)                            # it reads the sound
    with pytest.raises(ImageBindError, match="windows of 2 s.*has 1.50 s"):
        ib_score(net, frames[:12], wave, fps=8.0, rate=16000)


def test_a_file_in_another_layout_names_the_key(tmp_path, weights):
    state = torch.load(weights, weights_only=True)
    del state["modality_trunks.audio.blocks.0.attn.bias_k"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(FeatureWeightsError, match=r"eval.imagebind_path.*missing: modality_trunks.audio.blocks.0"):
        load_imagebind(bad)
    with pytest.raises(FeatureWeightsError, match="eval.imagebind_path"):
        load_imagebind("")


def test_eval_cli_reports_the_score_and_its_reference(tmp_path, weights):
    import json

    from launch.eval import main
    from svgen.media.mp4 import write_mp4

    rng = np.random.default_rng(3)
    for d in ("gen", "ref"):
        for k in range(2):
            write_mp4(tmp_path / d / f"clip{k}.mp4", rng.integers(0, 255, (24, 64, 64, 3), dtype=np.uint8), fps=8,
                      wave=(rng.standard_normal(3 * 16000) * 0.1).astype(np.float32), sample_rate=16000)
    out = tmp_path / "scores.json"
    assert main(["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"), "--metrics", "ib_score",
                 "--no-mlflow", "--out", str(out), "--set", f"eval.imagebind_path={weights}",
                 "--set", "eval.device=cpu"]) == 0
    scores = json.loads(out.read_text())
    assert scores["num_generated"] == 2 and -1.0 <= scores["ib_score"] <= 1.0
    assert -1.0 <= scores["ib_score_reference"] <= 1.0 and scores["ib_score"] != scores["ib_score_reference"]
