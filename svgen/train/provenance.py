"""What a run was made from, recorded on its tracker run: the code (git commit), the data (the
shard list and data_prep's manifest, by digest) and the config; and, on request, a digest of the
frozen base weights to prove training never changed them."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from svgen.config import Config, flatten, to_dict
from svgen.data.source import ShardSource
from svgen.distributed import DistInfo
from svgen.fileio import write_text


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def frozen_digest(model) -> str:
    """SHA-1 over the names and values of every frozen base weight."""
    h = hashlib.sha1()
    for name, p in sorted(model.frozen_parameters().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def record_start(tracker, cfg: Config, *, source: ShardSource, info: DistInfo, out_dir: Path) -> None:
    """Params, provenance tags and the shard list / config artifacts of a new run."""
    tracker.log_params(flatten(to_dict(cfg)))
    manifest = source.manifest_digest()
    tracker.set_tags({"git_commit": git_commit(), "world_size": str(info.world_size),
                      "shards_sha1": source.urls_digest(), "dataset_manifest_sha1": manifest})
    root = str(source.roots[0]) if source.roots else source.spec
    tracker.log_dataset(Path(root).name or "shards", root, manifest if manifest != "none" else source.urls_digest())
    if info.is_main:
        tracker.log_artifact(write_text(out_dir / "shards.txt", "\n".join(source.urls) + "\n"))
        tracker.log_artifact(out_dir / "config.yaml")
        supersede_earlier_run(tracker, out_dir)


def supersede_earlier_run(tracker, out_dir: Path) -> None:
    """A run killed before its first checkpoint cannot be resumed, so training starts a new
    tracker run; the earlier one, named in out_dir/tracker_run.txt, would otherwise stay
    'RUNNING' in the MLflow UI for ever. It is marked KILLED and pointed at its successor."""
    if tracker.run_id is None:
        return
    marker = out_dir / "tracker_run.txt"
    earlier = marker.read_text().strip() if marker.is_file() else ""
    if earlier and earlier != tracker.run_id:
        tracker.supersede(earlier)
    write_text(marker, tracker.run_id + "\n")
