"""train.source.shards resolved once: a data_prep folder, one .tar and a list file give the same manifest
digest and the same latent-cache check (before, only a folder did, and the others failed with a
misleading error or tagged the run's manifest as 'none')."""

import hashlib
import json

import pytest

from svgen.data.source import ShardError, resolve_shards

FP = "f" * 40


@pytest.fixture
def prepped(tmp_path):
    """A data_prep output folder: two raw shards, their latent twins, the manifest, the cache index."""
    root = tmp_path / "shards"
    root.mkdir()
    for i in range(2):
        (root / f"shard-00000{i}.tar").write_bytes(b"raw")
        (root / f"latent-shard-00000{i}.tar").write_bytes(b"latent")
    (root / "manifest.jsonl").write_text('{"input": "a.mp4", "shard": "shard-000000.tar", "clips": []}\n')
    (root / "latents.json").write_text(json.dumps({"encoder_fingerprint": FP, "shards": 2}))
    return root


def _forms(root, tmp_path):
    listing = tmp_path / "train.list"
    listing.write_text(f"{root / 'shard-000000.tar'}\nshards/shard-000001.tar\n")  # absolute and relative
    return {"folder": root, "tar": root / "shard-000001.tar", "list": listing}


@pytest.mark.parametrize("form", ["folder", "tar", "list"])
def test_every_form_finds_the_manifest_and_the_cache(prepped, tmp_path, form):
    spec = _forms(prepped, tmp_path)[form]
    raw = resolve_shards(spec)
    assert raw.roots == (prepped,)
    assert raw.manifest_digest() == hashlib.sha1((prepped / "manifest.jsonl").read_bytes()).hexdigest()
    lat = resolve_shards(spec, latents=True)
    assert [p.split("/")[-1] for p in lat.urls] == ["latent-" + p.split("/")[-1] for p in raw.urls]
    lat.check_latent_cache(FP)  # the right encoders: accepted
    with pytest.raises(ShardError, match="stale latent cache"):
        lat.check_latent_cache("0" * 40)


@pytest.mark.parametrize("form", ["folder", "tar", "list"])
def test_a_missing_cache_names_the_real_problem(prepped, tmp_path, form):
    spec = _forms(prepped, tmp_path)[form]
    (prepped / "latents.json").unlink()
    with pytest.raises(ShardError, match=r"latents\.json' is missing.*cache_latents\.py --shards"):
        resolve_shards(spec, latents=True).check_latent_cache(FP)
    for p in prepped.glob("latent-shard-*.tar"):
        p.unlink()
    with pytest.raises(ShardError, match="latent") as e:
        resolve_shards(spec, latents=True)
    assert "cache_latents.py --shards" in str(e.value) and str(prepped) in str(e.value)


def test_no_manifest_is_tagged_none_and_bad_specs_are_refused(prepped, tmp_path):
    (prepped / "manifest.jsonl").unlink()
    assert resolve_shards(prepped).manifest_digest() == "none"
    with pytest.raises(ShardError, match="empty"):
        resolve_shards("")
    with pytest.raises(ShardError, match="no shards at"):
        resolve_shards(tmp_path / "nope")
    listing = tmp_path / "bad.list"
    listing.write_text(str(prepped / "shard-000009.tar") + "\n")
    with pytest.raises(ShardError, match="do not exist.*shard-000009"):
        resolve_shards(listing)
    remote = tmp_path / "remote.list"
    remote.write_text("pipe:aws s3 cp s3://bucket/shard-000000.tar -\n")
    src = resolve_shards(remote, allow_pipe=True)  # train.source.allow_pipe: passed through as given
    assert src.urls == ("pipe:aws s3 cp s3://bucket/shard-000000.tar -",) and src.roots == ()
