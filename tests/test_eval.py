"""FVD / KVD (I3D), PANNs-FD, the metric suite over mp4 folders and data_prep shards, the eval
CLI's MLflow run, and the training loop's validation scoring.

The feature networks are narrow (1/16 width), randomly initialised, and saved in the published
checkpoints' layouts: the tests check the maths and the plumbing, not the published scores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from svgen.config import EvalConfig, load_config, to_yaml
from svgen.metrics.fad import VGGish, frechet_distance, kernel_distance
from svgen.metrics.i3d import InceptionI3d, i3d_features, load_i3d
from svgen.metrics.panns import Cnn14, load_panns, panns_embeddings
from svgen.metrics.suite import Clip, FeatureNets, evaluate, iter_clips
from svgen.metrics.weights import FeatureWeightsError

from .conftest import ROOT, TINY

FPS, SR = 8, 16000


def _clip(k: int, seconds: float = 2.0, shift: float = 0.0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A square that jumps at three clip-specific times, with a click (+ shift) at each jump; a
shift of 3 frames puts every click at least 2 frames from any jump. Jumps stay off the first
and last frames, where AV-Align (as the reference) never places a motion peak."""
    n = int(seconds * FPS)
    events = [(2 + k % 2 + 5 * j) / FPS for j in range(3)]   # 5 frames apart, last at frame 12 or 13
    frames = np.zeros((n, size, size, 3), np.uint8)
    frames[..., k % 3] = 40 + 10 * k
    pos = 2
    for i in range(n):
        if any(abs(i / FPS - e) < 1e-6 for e in events):
            pos = size // 2 if pos == 2 else 2
        frames[i, pos:pos + size // 4, pos:pos + size // 4] = 255
    wave = np.zeros(int(seconds * SR), np.float32)
    t = np.arange(int(0.01 * SR)) / SR
    click = (np.sin(2 * np.pi * (500 + 100 * k) * t) * np.exp(-t / 0.003)).astype(np.float32)
    for e in events:
        i = int((e + shift) * SR)
        if 0 <= i < len(wave):
            wave[i:i + len(click)] += click[: len(wave) - i]
    return frames, wave


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict[str, Path]:
    """Narrow VGGish, CNN14 and I3D saved as the published files are laid out."""
    root = tmp_path_factory.mktemp("feature_nets")
    torch.manual_seed(0)
    torch.save(VGGish(width=1 / 16).state_dict(), root / "vggish.pt")
    cnn = Cnn14(width=1 / 16).state_dict()
    # As in Cnn14_16k_mAP=0.438.pth: under 'model', with the front end's fixed tensors.
    cnn["logmel_extractor.melW"] = cnn.pop("mel_fb")
    cnn["spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(257, 1, 512)
    torch.save({"model": cnn, "iteration": 0}, root / "panns.pth")
    i3d = InceptionI3d(width=1 / 16)
    for m in i3d.modules():  # give BatchNorm non-trivial statistics to load
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(i3d.state_dict(), root / "i3d.pt")
    return {"vggish": root / "vggish.pt", "panns": root / "panns.pth", "i3d": root / "i3d.pt"}


def test_full_size_layouts_match_the_published_networks():
    i3d_net, cnn_net = InceptionI3d(), Cnn14()
    # The parameter counts of the published I3D (pytorch-i3d) and CNN14 (PANNs) networks.
    assert sum(p.numel() for p in i3d_net.parameters()) == 12_697_264
    assert sum(p.numel() for p in cnn_net.parameters()) == 80_753_615
    i3d, cnn = i3d_net.state_dict(), cnn_net.state_dict()
    assert i3d["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert i3d["Mixed_5c.b1b.conv3d.weight"].shape == (384, 192, 3, 3, 3)
    assert i3d["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    assert cnn["conv_block6.conv2.weight"].shape == (2048, 2048, 3, 3)
    assert cnn["fc_audioset.weight"].shape == (527, 2048) and cnn["bn0.running_mean"].shape == (64,)
    assert cnn["mel_fb"].shape == (257, 64)


def test_i3d_loads_and_fvd_grows_with_noise(nets):
    net = load_i3d(nets["i3d"])
    saved = torch.load(nets["i3d"], weights_only=True)
    assert torch.equal(net.Mixed_4b.b1b.bn.running_var, saved["Mixed_4b.b1b.bn.running_var"])
    clips = [_clip(k)[0] for k in range(8)]
    ref = i3d_features(net, clips)
    assert ref.shape == (8, 400)
    assert frechet_distance(ref, ref) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    fvd = []
    for level in (8, 32, 96):
        noisy = [np.clip(c + rng.normal(0, level, c.shape), 0, 255).astype(np.uint8) for c in clips]
        fvd.append(frechet_distance(ref, i3d_features(net, noisy)))
    assert 0 < fvd[0] < fvd[1] < fvd[2], fvd


def test_i3d_rejects_short_clips_by_key(nets):
    with pytest.raises(ValueError, match="eval.fvd_frames"):
        i3d_features(load_i3d(nets["i3d"]), [np.zeros((8, 32, 32, 3), np.uint8)])


def test_panns_checkpoint_and_fd(nets):
    net = load_panns(nets["panns"])
    assert torch.equal(net.mel_fb, torch.load(nets["panns"], weights_only=True)["model"]["logmel_extractor.melW"])
    waves = [_clip(k)[1] + 0.05 * np.sin(2 * np.pi * (200 + 150 * k) * np.arange(2 * SR) / SR).astype(np.float32)
             for k in range(10)]
    ref = panns_embeddings(net, waves)
    assert ref.shape == (10, 128)  # 2048 at full width
    assert frechet_distance(ref, ref) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(1)
    fd = [frechet_distance(ref, panns_embeddings(net, [w + lvl * rng.standard_normal(len(w)).astype(np.float32)
                                                       for w in waves])) for lvl in (0.01, 0.1, 0.5)]
    assert 0 < fd[0] < fd[1] < fd[2], fd


def test_kernel_distance():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    same = kernel_distance(x, y)
    shifted = [kernel_distance(x, y + s) for s in (0.25, 0.5, 1.0)]
    assert abs(same) < 0.02 and same < shifted[0] < shifted[1] < shifted[2], (same, shifted)
    # Large sets: scored on random subsets, same expectation.
    assert kernel_distance(x, y + 1.0, subset_size=100, subsets=50) == pytest.approx(shifted[2], rel=0.25)


def test_weight_files_are_checked_by_name(nets, tmp_path):
    with pytest.raises(FeatureWeightsError, match="eval.i3d_path"):
        load_i3d(tmp_path / "missing.pt")
    with pytest.raises(FeatureWeightsError, match="does not hold I3D weights"):
        load_i3d(nets["vggish"])
    with pytest.raises(FeatureWeightsError, match="eval.panns_path"):
        FeatureNets(EvalConfig(metrics=["fd_panns"]), ["fd_panns"])
    bad = torch.load(nets["i3d"], weights_only=True)
    bad["logits.conv3d.weight"] = bad["logits.conv3d.weight"][:10]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(FeatureWeightsError, match="wrong shape: logits.conv3d.weight"):
        load_i3d(tmp_path / "bad.pt")


def _write_mp4s(folder: Path, ks, shift: float = 0.0) -> None:
    from svgen.media.mp4 import write_mp4

    for k in ks:
        frames, wave = _clip(k, shift=shift)
        write_mp4(folder / f"clip{k:02d}.mp4", frames, fps=FPS, wave=wave, sample_rate=SR)


def _write_shards(folder: Path, ks) -> None:
    """Reference clips as data_prep writes them (two shards)."""
    import webdataset as wds

    from svgen.shards import encode_sample, shard_name

    folder.mkdir(parents=True)
    ks = list(ks)
    for s, part in enumerate((ks[: len(ks) // 2], ks[len(ks) // 2:])):
        with wds.TarWriter(str(folder / shard_name(s))) as w:
            for k in part:
                frames, wave = _clip(k)
                w.write(encode_sample(f"{k:06d}", frames, wave, {"fps": FPS, "sample_rate": SR}))


def test_suite_reads_mp4_folders_and_shards_alike(tmp_path):
    _write_mp4s(tmp_path / "mp4", range(3))
    _write_shards(tmp_path / "shards", range(4))
    a = list(iter_clips(tmp_path / "mp4"))
    b = list(iter_clips(tmp_path / "shards", limit=3))
    assert [c.name for c in b] == ["000000", "000001", "000002"] and len(a) == 3
    for x, y in zip(a, b):
        assert x.frames.shape == y.frames.shape and x.fps == y.fps == FPS
        assert np.abs(x.frames.astype(int) - y.frames.astype(int)).mean() < 6   # H.264 round trip
        assert abs(len(x.wave) - len(y.wave)) <= SR // 10
    with pytest.raises(ValueError, match="neither a folder of .mp4 files nor data_prep shards"):
        list(iter_clips(tmp_path / "nothing"))


def test_evaluate_synced_vs_shifted_and_distances(nets, tmp_path):
    cfg = EvalConfig(metrics=["av_align", "fad_vggish", "fd_panns", "fvd", "kvd"], vggish_path=str(nets["vggish"]),
                     panns_path=str(nets["panns"]), i3d_path=str(nets["i3d"]), batch_size=3)
    ref = [Clip(str(k), *_clip(k), FPS) for k in range(6)]
    same, ref_feats = evaluate(ref, ref, cfg, progress=False)
    assert same["av_align"] == pytest.approx(1.0) and same["av_align_reference"] == pytest.approx(1.0)
    for m in ("fad_vggish", "fd_panns", "fvd"):
        assert same[m] == pytest.approx(0.0, abs=1e-6)
    shifted = [Clip(str(k), *_clip(k, shift=0.375), FPS) for k in range(6)]
    other, _ = evaluate(shifted, None, cfg, reference_features=ref_feats, progress=False)
    assert other["av_align"] < 0.2 and other["fad_vggish"] > 0 and other["num_reference"] == 6
    with pytest.raises(ValueError, match="eval.reference"):
        evaluate(shifted, None, cfg, progress=False)


@pytest.mark.multiprocess
def test_eval_cli_against_shards_logs_checkpoint_params(nets, tmp_path):
    import mlflow

    from svgen.train.checkpoint import export_weights

    _write_mp4s(tmp_path / "gen", range(4), shift=0.375)
    _write_shards(tmp_path / "ref", range(4))
    cfg = load_config(TINY, ["train.optim.lr=0.000123"])
    weights = export_weights(tmp_path / "trained.safetensors", {"w": torch.zeros(1)}, {"config": to_yaml(cfg)})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sets = [f"eval.vggish_path={nets['vggish']}", f"eval.panns_path={nets['panns']}", f"eval.i3d_path={nets['i3d']}"]
    cmd = [sys.executable, str(ROOT / "launch" / "eval.py"), "--generated", str(tmp_path / "gen"),
           "--reference", str(tmp_path / "ref"), "--weights", str(weights), "--tracking-uri", uri,
           "--metrics", "av_align,fad_vggish,fd_panns,fvd,kvd"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.split("logged to MLflow run ")[1].split()[0]
    mlflow.set_tracking_uri(uri)
    run = mlflow.MlflowClient().get_run(run_id)
    m = run.data.metrics
    assert {"eval/av_align", "eval/fad_vggish", "eval/fd_panns", "eval/fvd", "eval/kvd"} <= set(m)
    assert m["eval/av_align"] < 0.2 and m["eval/av_align_reference"] == pytest.approx(1.0)
    assert m["eval/num_generated"] == 4 and m["eval/num_reference"] == 4
    assert run.data.params["train.optim.lr"] == "0.000123"          # the checkpoint's own config
    assert run.data.tags["eval.checkpoint"] == str(weights)

    # A missing weight file fails before any clip is decoded, naming its key.
    bad = subprocess.run(cmd[:-6] + ["--set", f"eval.vggish_path={tmp_path}/nope.pt", "--no-mlflow"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "eval.vggish_path" in bad.stderr and "nope.pt" in bad.stderr


def test_validation_scores_with_the_eval_suite(tiny_cfg, nets, tmp_path):
    from svgen.distributed import DistInfo
    from svgen.system import build_system
    from svgen.train.validation import Validator

    class Recorder:
        def __init__(self):
            self.metrics, self.artifacts = {}, []

        def log(self, metrics, step):
            self.metrics.update(metrics)

        def log_artifact(self, path, subdir=None):
            self.artifacts.append(Path(path))

    _write_shards(tmp_path / "ref", range(4))
    sets = ["sample.steps=2", "train.val.clips=2", f"eval.reference={tmp_path / 'ref'}",
            "eval.metrics=[av_align,fad_vggish]", f"eval.vggish_path={nets['vggish']}"]
    cfg = tiny_cfg(*sets)
    system = build_system(cfg)
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend="gloo")
    rec = Recorder()
    validate = Validator(cfg, tmp_path / "out", info, rec)
    validate(system, 5)
    assert len(rec.artifacts) == 2 and all(p.suffix == ".mp4" for p in rec.artifacts)
    assert {"val/av_align", "val/fad_vggish", "val/av_align_reference"} <= set(rec.metrics)
    assert rec.metrics["val/fad_vggish"] > 0 and validate.reference is not None
    # Later validations reuse the reference features (the shards are not read again).
    for p in (tmp_path / "ref").iterdir():
        p.unlink()
    rec.metrics.clear()
    validate(system, 10)
    assert rec.metrics["val/fad_vggish"] > 0
