"""DeSync (issue 22): Synchformer in the public checkpoint's layout, its preprocessing, and the
metric through launch/eval.py. A narrow Synchformer with random weights is saved in that layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svgen.metrics.synchformer import (OFFSETS, SEGMENTS, WINDOW, DesyncError, Sizes, Synchformer, audio_segments,
                                       desync, load_synchformer, sizes_of, video_segments)
from svgen.metrics.weights import FeatureWeightsError

NARROW = Sizes(dim=96, depth=1, ast_depth=1, sync_depth=1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    net = Synchformer(NARROW)
    for p in net.parameters():  # random, not zero: the tokens must carry something
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path_factory.mktemp("synchformer") / "synchformer_state_dict.pth"
    torch.save(net.state_dict(), path)
    return path


def test_the_checkpoint_layout_and_sizes():
    keys = set(Synchformer(Sizes(dim=96, depth=1, ast_depth=1, sync_depth=1)).state_dict())
    # Names as MMAudio's synchformer_state_dict.pth holds them (transformers' AST layout before v5).
    for k in ("vfeat_extractor.patch_embed_3d.proj.weight", "vfeat_extractor.blocks.0.timeattn.qkv.weight",
              "vfeat_extractor.blocks.0.norm3.weight", "vfeat_extractor.spatial_attn_agg.self_attn.in_proj_weight",
              "vfeat_extractor.spatial_attn_agg.cls_token", "vfeat_extractor.temp_embed",
              "afeat_extractor.ast.embeddings.distillation_token",
              "afeat_extractor.ast.encoder.layer.0.attention.attention.query.weight",
              "afeat_extractor.ast.encoder.layer.0.layernorm_before.weight",
              "afeat_extractor.freq_attn_agg.linear1.weight", "vproj.weight", "aproj.weight",
              "transformer.OFF_tok", "transformer.MOD_tok", "transformer.pos_emb_cfg.pos_emb",
              "transformer.blocks.0.attn.query.weight", "transformer.blocks.0.mlp.2.weight", "transformer.off_head.weight"):
        assert k in keys, k
    full = Synchformer().state_dict()
    assert full["transformer.pos_emb_cfg.pos_emb"].shape == (1, 198, 768)         # 2 + 14 x (8 + 6) tokens
    assert full["afeat_extractor.ast.embeddings.position_embeddings"].shape == (1, 74, 768)  # 12 x 6 + 2
    assert full["transformer.off_head.weight"].shape == (21, 768)
    assert sizes_of(full) == Sizes() and sizes_of(Synchformer(NARROW).state_dict()) == NARROW


def test_segments_follow_the_reference_timing():
    fps, rate = 8.0, 16000
    frames = np.zeros((48, 64, 96, 3), np.uint8)
    for k in range(48):
        frames[k] = k * 5                                        # each 8 fps frame its own grey level
    v = video_segments(frames, fps, start=0.0)
    assert v.shape == (SEGMENTS, 16, 3, 224, 224) and v.min() >= -1 and v.max() <= 1
    # Segment s starts 0.32 s x s in; frame j of it is at (8 s + j) / 25 s: the 8 fps frame on screen then.
    for s, j in ((0, 0), (3, 5), (13, 15)):
        want = int(np.floor((8 * s + j) / 25 * fps + 1e-6)) * 5 / 255.0
        assert v[s, j].mean().item() == pytest.approx(want * 2 - 1, abs=2e-3)
    wave = np.zeros(int(6 * rate), np.float32)
    wave[int(1.0 * rate):int(1.0 * rate) + 160] = 0.9            # a click at 1.0 s
    a = audio_segments(wave, rate, start=0.0)
    assert a.shape == (SEGMENTS, 66, 128)
    loud = a.mean(-1)[:, :62]        # 62 frames of 25 ms every 10 ms in 0.64 s; AST's extractor pads to 66
    # The click at 1.0 s lies in segments 2 and 3 (0.64-1.28 and 0.96-1.6 s) only.
    hot = [s for s in range(SEGMENTS) if loud[s].max() - loud[s].min() > 1.0]
    assert hot == [2, 3], hot


def test_desync_is_an_offset_class_of_a_long_enough_clip(weights):
    net = load_synchformer(weights)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (48, 64, 64, 3), dtype=np.uint8)     # 6 s at 8 fps
    wave = (rng.standard_normal(6 * 16000) * 0.1).astype(np.float32)
    d = desync(net, frames, wave, fps=8.0, rate=16000)
    # The mean of |offset| over the first and the last 4.8 s: multiples of 0.1 s in [0, 2].
    assert 0.0 <= d <= 2.0 and abs(d * 10 - round(d * 10)) < 1e-6
    assert set(np.round(np.abs(OFFSETS), 6)) <= set(np.round(np.arange(0, 2.01, 0.2), 6))
    with pytest.raises(DesyncError, match=f"reads {WINDOW:.1f} s of a clip.*has 4.00 s"):
        desync(net, frames[:32], wave[: 4 * 16000], fps=8.0, rate=16000)


def test_a_file_in_another_layout_names_the_key(tmp_path, weights):
    state = torch.load(weights, weights_only=True)
    del state["transformer.off_head.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(FeatureWeightsError, match=r"eval.synchformer_path.*missing: transformer.off_head.weight"):
        load_synchformer(bad)
    with pytest.raises(FeatureWeightsError, match="eval.synchformer_path"):
        load_synchformer("")


def test_eval_cli_reports_desync(tmp_path, weights, capsys):
    from launch.eval import main
    from svgen.media.mp4 import write_mp4

    gen = tmp_path / "gen"
    rng = np.random.default_rng(1)
    for k in range(2):
        write_mp4(gen / f"clip{k}.mp4", rng.integers(0, 255, (40, 64, 64, 3), dtype=np.uint8), fps=8,
                  wave=(rng.standard_normal(5 * 16000) * 0.1).astype(np.float32), sample_rate=16000)
    out = tmp_path / "scores.json"
    assert main(["--generated", str(gen), "--metrics", "av_align,desync", "--no-mlflow", "--out", str(out),
                 "--set", f"eval.synchformer_path={weights}", "--set", "eval.device=cpu"]) == 0
    import json

    scores = json.loads(out.read_text())
    assert scores["num_generated"] == 2 and 0.0 <= scores["desync"] <= 2.0
