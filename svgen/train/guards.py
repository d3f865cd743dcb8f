"""What stops a run before it poisons its own state: non-finite losses and weights, and more
damaged data than the run allows. Each guard turns the fault into a :class:`TrainingError`
that names the step, the modality or the shard, and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from svgen.data.loader import describe_bad
from svgen.distributed import all_true


class TrainingError(RuntimeError):
    """The run stopped on a fault it detected; the message names where and what to do."""


class NonFiniteGuard:
    """Counts consecutive steps whose loss is NaN or infinite (per modality, any rank) and
    stops the run after ``limit`` of them."""

    def __init__(self, limit: int):
        self.limit, self.run, self.since = limit, 0, None
        self.modalities: set[str] = set()

    def update(self, step: int, audio_bad: bool, video_bad: bool) -> None:
        if not (audio_bad or video_bad):
            self.run, self.since, self.modalities = 0, None, set()
            return
        self.run += 1
        self.since = step if self.since is None else self.since
        self.modalities |= {m for m, bad in (("audio", audio_bad), ("video", video_bad)) if bad}
        if self.run >= self.limit:
            which = " and ".join(sorted(self.modalities))
            raise TrainingError(f"the {which} loss has been NaN or infinite for {self.run} consecutive steps "
                                f"(steps {self.since}-{step}; train.max_nonfinite_steps={self.limit}): stopped without "
                                "saving. Resume from the last checkpoint with a lower train.optim.lr, or check the "
                                "data and train.parallel.precision")


def weights_finite(params: list[torch.nn.Parameter]) -> bool:
    """Every trained weight finite on every rank (ZeRO-3: each rank checks its partition).
    Collective; a host sync, for save and export points only."""
    local = [getattr(p, "ds_tensor", p).detach() for p in params]
    ok = all(bool(torch.isfinite(t).all()) for t in local if t.numel())
    return all_true(ok)


def require_finite(params: list[torch.nn.Parameter], step: int, what: str, last_good: Path | None) -> None:
    if not weights_finite(params):
        good = f"the last good checkpoint is {last_good}" if last_good else "no earlier checkpoint exists"
        raise TrainingError(f"trained weights hold NaN or infinite values at step {step}: the {what} was not "
                            f"written ({good}). Resume from it with a lower train.optim.lr, or check the data and "
                            "train.parallel.precision")


class BadData:
    """This rank's ledger of damaged samples and shards: each distinct one is logged once to
    ``out_dir/bad_samples.rankR.jsonl`` (which also carries the count across a resume) and
    printed; :attr:`exceeded` once there are more than ``limit``."""

    def __init__(self, out_dir: str | Path, rank: int, limit: int):
        self.path = Path(out_dir) / f"bad_samples.rank{rank}.jsonl"
        self.rank, self.limit = rank, limit
        self.seen: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                self.seen[self._key(rec)] = rec

    @staticmethod
    def _key(rec: dict) -> str:
        return json.dumps([rec.get("shard"), rec.get("key"), rec.get("member"), rec.get("error")])

    def __call__(self, records: list[dict]) -> None:
        fresh = [r for r in records if self._key(r) not in self.seen]
        if not fresh:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            for r in fresh:
                self.seen[self._key(r)] = r
                f.write(json.dumps(r) + "\n")
                print(f"[rank {self.rank}] skipped damaged data ({len(self.seen)}/{self.limit} allowed): "
                      f"{describe_bad(r)}", flush=True)

    @property
    def count(self) -> int:
        return len(self.seen)

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit

    def error(self) -> TrainingError:
        first = "; ".join(describe_bad(r) for r in list(self.seen.values())[:3])
        return TrainingError(f"{self.count} damaged samples or shards on rank {self.rank}, more than "
                             f"train.source.max_bad_samples={self.limit} (first: {first}); every one is listed in "
                             f"{self.path}. Re-run data prep (it remakes damaged shards) or remove them from the "
                             "shard list, then resume")
