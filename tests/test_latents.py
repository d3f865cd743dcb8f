"""Cached latents: encode the shards once with Ray actors, train from them, refuse stale caches."""

import json
import subprocess
import sys

import pytest
import torch

from data_prep.run import run as run_prep
from svgen.config import load_config
from svgen.data.loader import make_loader
from svgen.data.source import resolve_shards

from .conftest import ROOT, TINY, tiny_overrides
from svgen.testing.media import write_flash_click


pytestmark = pytest.mark.multiprocess  # Ray and subprocesses in every test


@pytest.fixture(scope="module")
def cached(tmp_path_factory, tiny_bases):
    root = tmp_path_factory.mktemp("latents")
    src = root / "in"
    src.mkdir()
    for i in range(4):
        write_flash_click(src / f"v{i}.mp4", [0.4, 1.3], duration=2.1)
    shards = root / "shards"
    run_prep(str(src), str(shards), load_config(TINY, ["prep.inputs_per_shard=2", "prep.workers=2"]), progress=False)
    import ray

    ray.shutdown()
    sets = [a for o in tiny_overrides(tiny_bases) for a in ("--set", o)]
    cmd = [sys.executable, str(ROOT / "launch" / "cache_latents.py"), "--config", str(TINY), "--shards", str(shards),
           "--batch-size", "3", *sets]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return shards, cmd, proc.stdout


def test_latent_shards_hold_what_the_encoders_give(cached, system_factory):
    shards, _, out = cached
    assert "8 clips in 2 shards" in out
    assert sorted(p.name for p in shards.glob("latent-shard-*.tar")) == ["latent-shard-000000.tar", "latent-shard-000001.tar"]
    system = system_factory()
    assert json.loads((shards / "latents.json").read_text())["encoder_fingerprint"] == system.encoder_fingerprint(
        load_config(TINY).data)
    raw = {k: b for b in make_loader(shards, 1, shuffle_buffer=1) for k in b["key"]}
    lat = {k: b for b in make_loader(shards, 1, shuffle_buffer=1, latents=True) for k in b["key"]}
    assert raw.keys() == lat.keys()
    key = sorted(raw)[0]
    post_a, post_v, _, text_v = system.encode_posteriors(raw[key], load_config(TINY).data)
    torch.testing.assert_close(lat[key]["latent_a"], post_a.mean, rtol=1e-2, atol=1e-2)  # stored as float16
    torch.testing.assert_close(lat[key]["latent_a_std"], post_a.std, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(lat[key]["latent_v"], post_v.mean, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(lat[key]["latent_v_std"], post_v.std, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(lat[key]["text_v"], text_v, rtol=1e-2, atol=1e-2)
    # Training draws from the cached posterior: two draws differ, both near the mean.
    from svgen.data.latents import from_cached

    d1, d2 = (from_cached(lat[key], torch.device("cpu"), torch.Generator().manual_seed(s)) for s in (1, 2))
    assert not torch.equal(d1.x_a, d2.x_a)
    assert (d1.x_v - lat[key]["latent_v"]).abs().max() <= 6 * lat[key]["latent_v_std"].max()


def test_rerun_skips_and_stale_caches_are_refused(cached, tiny_bases, tmp_path):
    shards, cmd, _ = cached
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 shards (2 already done)" in again.stdout
    other = subprocess.run(cmd + ["--set", "data.fmax=7000"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and "latents of other encoders or settings" in other.stderr
    with pytest.raises(ValueError, match="stale latent cache"):
        resolve_shards(shards, latents=True).check_latent_cache("0" * 40)


def test_training_from_cached_latents(cached, tiny_bases, tmp_path):
    shards, _, _ = cached
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_bases) + [f"train.source.shards={shards}", "train.source.cached_latents=true", f"train.out_dir={out}",
                                          "train.steps=2", "train.batch_size=2", "train.log_every=1", "sample.steps=2", "train.check_frozen=true",
                                          "track.backend=none"]
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(TINY),
                           *[a for s in sets for a in ("--set", s)]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "train_result.json").read_text())
    assert result["step"] == 2 and result["frozen_before"] == result["frozen_after"]
