"""The ablation's synthetic hits corpus (issue 12): ground truth that the pictures and the sound
actually carry, determinism, and the trip through mp4 and the real data prep."""

import json
import subprocess
import sys

import numpy as np
import pytest

from experiments.ablation.hits import MATERIALS, VIDEO_CODING, Spec, make_clip, write_split
from experiments.ablation.stages import make_data
from svgen.media.mp4 import probe, read_mp4

from .conftest import MEDIA_SOUNDS as MEDIA
from .conftest import ROOT, yuv420p_round_trip

SPEC = Spec(seconds=3.0)


def _ball(frame: np.ndarray, spec: Spec) -> tuple[int, np.ndarray, float]:
    """Pixels between the ball's lowest row and the floor, the ball's mean colour, and its
    width over its height."""
    s = spec.size
    floor = s - max(3, s // 8)
    above = frame[:floor].astype(int)
    background = np.median(above.reshape(-1, 3), axis=0)
    ball = np.abs(above - background).sum(-1) > 120
    rows, cols = np.nonzero(ball.any(1))[0], np.nonzero(ball.any(0))[0]
    return floor - 1 - rows.max(), above[ball].mean(0), (np.ptp(cols) + 1) / (np.ptp(rows) + 1)


@pytest.mark.parametrize("index", range(8))
def test_the_pictures_and_the_sound_carry_the_ground_truth(index):
    clip = make_clip(7, index, SPEC, MEDIA)
    assert len(clip.impacts) <= SPEC.max_hits and clip.caption == MATERIALS[clip.material].caption
    frames_at = [round(t * SPEC.fps) for t in clip.impacts]
    assert [f / SPEC.fps for f in frames_at] == clip.impacts                     # on frame boundaries
    assert all(b - a >= SPEC.min_gap * SPEC.fps for a, b in zip(frames_at, frames_at[1:]))
    for f in range(SPEC.frames):
        gap, colour, aspect = _ball(clip.frames[f], SPEC)
        assert np.abs(colour - MATERIALS[clip.material].colour).max() < 45       # the material shows
        if f in frames_at:
            assert gap == 0 and aspect > 1.3, (f, gap, aspect)                    # on the floor, squashed
        else:
            assert aspect < 1.25, (f, aspect)
            if frames_at and frames_at[0] < f < frames_at[-1]:
                assert gap >= 3, (f, gap)                                         # in the air between hits
    sr, win = SPEC.sample_rate, int(0.03 * SPEC.sample_rate)
    rms = lambda a, b: float(np.sqrt(np.mean(clip.wave[a:b] ** 2)))  # noqa: E731
    for t in clip.impacts:
        i = round(t * sr)
        assert rms(i, i + win) > 3 * rms(i - win, i) and rms(i, i + win) > 0.05, t  # a sound starts there
    if not clip.impacts:
        assert np.abs(clip.wave).max() < 0.02                                     # no hit, no sound


def test_clips_are_a_function_of_seed_and_index():
    a, b = make_clip(3, 5, SPEC, MEDIA), make_clip(3, 5, SPEC, MEDIA)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.wave, b.wave) and a.impacts == b.impacts
    others = [make_clip(4, 5, SPEC, MEDIA), make_clip(3, 6, SPEC, MEDIA)]
    assert all(not np.array_equal(a.frames, o.frames) for o in others)
    counts = {len(make_clip(0, i, SPEC, MEDIA).impacts) for i in range(40)}
    assert counts == set(range(SPEC.max_hits + 1))                                # 0..4 hits all occur


def test_a_split_is_written_once_and_its_mp4s_keep_the_timing(tmp_path):
    spec = Spec(seconds=2.0)
    truth_file = write_split(tmp_path / "train", 3, 11, spec, MEDIA, progress=False)
    truth = json.loads(truth_file.read_text())
    assert truth["n"] == 3 and len(truth["clips"]) == 3
    rows = (tmp_path / "train" / "list.csv").read_text().splitlines()
    assert rows[0] == "path,caption" and len(rows) == 4
    first = tmp_path / "train" / "clips" / "00000.mp4"
    streams = {s["type"]: s for s in probe(first)["streams"]}
    assert streams["video"]["codec"] == "h264" and streams["audio"]["codec"] == "aac"
    # Decoded back, each impact is still a sound onset at its time (AAC's priming is trimmed).
    for name, clip in truth["clips"].items():
        _, wave, _ = read_mp4(tmp_path / "train" / "clips" / name, spec.sample_rate)
        win = int(0.03 * spec.sample_rate)
        for t in clip["impacts"]:
            i = round(t * spec.sample_rate)
            assert np.abs(wave[i - win // 3:i + win]).max() > 4 * np.abs(wave[i - 2 * win:i - win // 3]).max()
    # Coded lossless: every run decodes the same pixels (x264 at crf 18 is not bit-reproducible).
    frames, _, _ = read_mp4(first, spec.sample_rate)
    assert np.array_equal(frames, yuv420p_round_trip(make_clip(11, 0, spec, MEDIA).frames))
    stamp = first.stat().st_mtime_ns
    write_split(tmp_path / "train", 3, 11, spec, MEDIA, progress=False)                # complete: left as it is
    assert first.stat().st_mtime_ns == stamp


def test_clips_of_another_design_are_rewritten_and_their_shards_dropped(tmp_path):
    spec = Spec(seconds=2.0)
    out = tmp_path / "data"
    make_data(out, 2, 1, 11, spec, MEDIA, prep=False, progress=False)
    clip = out / "train" / "clips" / "00000.mp4"
    # A split as an older svgen left it (lossy clips, no clips.json, ground truth without the video coding),
    # already sharded: the clips are rewritten and the shards of the old ones dropped.
    truth = out / "train" / "impacts.json"
    truth.write_text(json.dumps({k: v for k, v in json.loads(truth.read_text()).items() if k != "video"}))
    (out / "train" / "clips.json").unlink()
    clip.write_bytes(b"old clip")
    (out / "train" / "shards").mkdir()
    (out / "train" / "shards" / "shard-000000.tar").write_bytes(b"old shard")
    make_data(out, 2, 1, 11, spec, MEDIA, prep=False, progress=False)
    assert clip.read_bytes() != b"old clip" and probe(clip)["streams"][0]["codec"] == "h264"
    assert not (out / "train" / "shards").exists()
    assert json.loads(truth.read_text())["video"] == VIDEO_CODING
    # An interrupted split of the same design keeps its clips; a complete one keeps its shards.
    (out / "train" / "shards").mkdir()
    stamp = clip.stat().st_mtime_ns
    make_data(out, 2, 1, 11, spec, MEDIA, prep=False, progress=False)
    assert (out / "train" / "shards").is_dir() and clip.stat().st_mtime_ns == stamp
    truth.unlink()
    make_data(out, 2, 1, 11, spec, MEDIA, prep=False, progress=False)
    assert clip.stat().st_mtime_ns == stamp and json.loads(truth.read_text())["n"] == 2


@pytest.mark.multiprocess
def test_make_data_shards_both_splits_with_the_real_data_prep(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "experiments.ablation", "make-data", "--media", str(MEDIA), "--out", str(out), "--train", "4", "--test", "2",
           "--seconds", "2", "--workers", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split, n in (("train", 4), ("test", 2)):
        summary = json.loads((out / split / "shards" / "summary.json").read_text())
        assert summary["clips_written"] == n and summary["errors"] == 0, summary
    train = json.loads((out / "train" / "impacts.json").read_text())
    test = json.loads((out / "test" / "impacts.json").read_text())
    assert train["seed"] != test["seed"]
    # A rerun finds both splits complete: no clip is written again, no shard re-made.
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train" / "shards" / "summary.json").read_text())
    assert summary["clips_written_this_run"] == 0 and summary["shards_skipped"] == summary["shards"]

    # make-bases pre-trains the tiny bases on the train shards into the layout the config reads.
    bases = tmp_path / "bases"
    cmd = [sys.executable, "-m", "experiments.ablation", "make-bases", "--data", str(out), "--out", str(bases),
           "--vae-steps", "3", "--unet-steps", "3", "--batch-size", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((bases / "bases.json").read_text())
    assert set(record["fits"]) == {"video", "audio", "unet_audio", "unet_video"} and record["spec"]["seconds"] == 2.0
    for part in ("audioldm/unet", "audioldm/vae", "sd15/unet", "sd15/vae", "motion_adapter"):
        assert (bases / part / "config.json").is_file(), part
    stamp = (bases / "bases.json").stat().st_mtime_ns
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)  # done: kept as is
    assert proc.returncode == 0 and (bases / "bases.json").stat().st_mtime_ns == stamp
