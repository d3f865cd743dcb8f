"""All resumable state in one place (STYLE.md, convention 6).

A checkpoint ``ckpt/step_NNNNNNN/`` holds the DeepSpeed engine state (trained weights,
optimizer, LR schedule; sharded per ZeRO rank), ``trainer.pt`` (a :class:`TrainerState`: step,
data position, EMA, tracker run id) and ``rng_rankR.pt`` per rank. It is written under a temporary name and renamed
when every rank has finished; the ``latest`` pointer moves last, then checkpoints beyond
``keep_last`` are deleted. Loading maps to CPU. ``export`` writes only the trained weights
(EMA and raw) as safetensors for sampling.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from svgen.data.loader import DataPosition
from svgen.distributed import barrier
from svgen.fileio import atomic_path, write_text


@dataclass
class TrainerState:
    """The resumable state outside the DeepSpeed engine and the RNGs."""

    step: int = 0
    """Optimizer steps done."""
    data: DataPosition = field(default_factory=DataPosition)
    """Where the run stands in its data."""
    run_id: str | None = None
    """The tracker run that a resumed run continues."""
    ema: dict | None = None
    """EMA state_dict, when the run keeps an EMA."""
    flops_per_sample: float | None = None
    """Training FLOPs per sample, counted once on the run's first step (for TFLOP/s and MFU): a
    resumed run keeps the count rather than counting again, which would run its first step
    through the counter's dispatch and round differently from the uninterrupted run."""

    def to_dict(self) -> dict:
        return {"step": self.step, "data": {"epoch": self.data.epoch, "batches": self.data.batches},
                "run_id": self.run_id, "ema": self.ema, "flops_per_sample": self.flops_per_sample}

    @staticmethod
    def from_dict(d: dict) -> "TrainerState":
        return TrainerState(int(d["step"]), DataPosition(**d["data"]), d.get("run_id"), d.get("ema"),
                            d.get("flops_per_sample"))


def _rng_state(generator: torch.Generator | None) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def _set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


class Checkpointer:
    def __init__(self, out_dir: str | Path, rank: int, keep_last: int = 3):
        self.root = Path(out_dir) / "ckpt"
        self.rank, self.keep_last = rank, keep_last

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        return path if path.is_dir() else None

    def save(self, engine, state: TrainerState, generator: torch.Generator | None) -> Path:
        tag = f"step_{state.step:07d}"
        tmp_tag = f".tmp_{tag}"
        final, tmp = self.root / tag, self.root / tmp_tag
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
        barrier()
        engine.save_checkpoint(str(self.root), tag=tmp_tag, save_latest=False)
        torch.save(_rng_state(generator), tmp / f"rng_rank{self.rank}.pt")
        if self.rank == 0:
            torch.save(state.to_dict(), tmp / "trainer.pt")
        barrier()
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            write_text(self.root / "latest", tag)  # the pointer moves last
            done = sorted(p for p in self.root.glob("step_*") if p.is_dir())
            for old in done[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def load(self, engine, generator: torch.Generator | None, path: Path | None = None) -> TrainerState | None:
        """Restore the engine and this rank's RNGs from ``path`` (default: the latest checkpoint);
        None when there is none."""
        path = path or self.latest()
        if path is None:
            return None
        engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=True)
        state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        rng = path / f"rng_rank{self.rank}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, map_location="cpu", weights_only=False), generator)
        return TrainerState.from_dict(state)


def export_weights(path: str | Path, weights: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Trained weights alone as safetensors (atomic)."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp), metadata=metadata or {})
    return Path(path)
