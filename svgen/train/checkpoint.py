"""All resumable state in one place (docs/design.md, "Checkpoints"), kept so that a run never loses
or poisons it and never runs code from it.

A checkpoint ``ckpt/step_NNNNNNN/`` holds:

- the DeepSpeed engine state (trained weights, optimizer, LR schedule; sharded per ZeRO rank);
- ``trainer.json`` (step, data position, tracker run id, FLOP count) and
  ``ema.safetensors`` (the EMA, when the run keeps one): plain data, no pickle;
- ``rng_rankR.safetensors`` per rank (every RNG, as tensors plus JSON metadata);
- ``config.yaml``, the config that trained up to this step (a resume compares against it);
- ``manifest.json``, written last: the size and SHA-256 of every other file.

Writing: every file goes into ``.tmp_step_NNNNNNN``; each rank hashes (and fsyncs) its share of
the files; rank 0 writes the manifest, renames the folder into place, then moves ``latest`` and
prunes beyond ``keep_last``. A failure on any rank (a full disk, ENOSPC) removes the temporary
folder on every rank and raises :class:`CheckpointError` naming the cause; the previous
checkpoint is untouched. An existing step folder is never overwritten.

Reading (``--resume auto``): the newest ``step_*`` folder whose manifest verifies, checked by
all ranks in parallel. A damaged one (a file missing, truncated or altered) is moved aside to
``damaged_step_NNNNNNN`` and the one before it is tried, saying so; when every checkpoint fails,
the run stops rather than starting over. Every file is unpickled with ``weights_only=True``,
DeepSpeed's too (its checkpoint engine is wrapped while loading), so a pickle payload is refused
with an error that names the file, and never runs.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from svgen.data.loader import DataPosition
from svgen.distributed import all_gather_objects, all_true, barrier
from svgen.fileio import atomic_path, file_digest, write_json, write_text

MANIFEST = "manifest.json"
TRAINER = "trainer.json"
EMA_FILE = "ema.safetensors"
CONFIG = "config.yaml"
FORMAT = 2
"""Checkpoint layout version (1: trainer.pt / rng_rankR.pt pickles, read with weights_only)."""
_STEP = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read as it should; the message names the file and the fix."""


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

    def to_json(self) -> dict:
        return {"step": self.step, "data": {"epoch": self.data.epoch, "batches": self.data.batches},
                "run_id": self.run_id, "flops_per_sample": self.flops_per_sample,
                "ema": None if self.ema is None else {"decay": self.ema["decay"], "updates": self.ema["updates"]}}

    @staticmethod
    def from_json(d: dict, ema_shadow: dict[str, torch.Tensor] | None) -> "TrainerState":
        ema = None
        if d.get("ema") is not None and ema_shadow is not None:
            ema = {**d["ema"], "shadow": ema_shadow}
        return TrainerState(step=int(d["step"]), data=DataPosition(**d["data"]), run_id=d.get("run_id"), ema=ema,
                            flops_per_sample=d.get("flops_per_sample"))


# ---------------------------------------------------------------------------------------------
# RNG state as tensors + JSON (no pickle)
# ---------------------------------------------------------------------------------------------


def _rng_tensors(generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    version, keys, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_mt": torch.from_numpy(np.asarray(mt, dtype=np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    if generator is not None:
        tensors["generator"] = generator.get_state()
    meta = {"python": json.dumps([version, list(keys), gauss]),
            "numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached)])}
    return tensors, meta


def _set_rng(tensors: dict[str, torch.Tensor], meta: dict[str, str], generator: torch.Generator | None) -> None:
    version, keys, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(keys), gauss))
    kind, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((kind, tensors["numpy_mt"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if generator is not None and "generator" in tensors:
        generator.set_state(tensors["generator"])


def _set_legacy_rng(state: dict, generator: torch.Generator | None) -> None:
    """Format 1 (rng_rankR.pt): plain types, read with weights_only."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# ---------------------------------------------------------------------------------------------
# Loading pickles without running them
# ---------------------------------------------------------------------------------------------


def _deepspeed_safe_globals() -> list:
    """The few non-tensor classes DeepSpeed itself writes into its checkpoint files."""
    out = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler

        out += [LossScaler, DynamicLossScaler]
    except ImportError:
        pass
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum

        out.append(ZeroStageEnum)
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address

        out.append(fragment_address)
    except ImportError:
        pass
    return out


def safe_torch_load(path: str | Path, map_location="cpu"):
    """``torch.load`` that refuses anything but tensors, plain containers and DeepSpeed's own
    bookkeeping classes: a pickle payload raises :class:`CheckpointError` and never runs."""
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load '{path}': it holds objects other than tensors and plain data ({first[:200]}). "
            "svgen never writes such a file: it was altered or does not come from this run. Delete that "
            "checkpoint folder (or move it away) and resume again.") from None


@contextmanager
def _safe_deepspeed_loads(engine) -> Iterator[None]:
    """Every file DeepSpeed reads while loading goes through :func:`safe_torch_load`."""
    ce = engine.checkpoint_engine
    original = ce.load
    ce.load = lambda path, map_location=None: safe_torch_load(path, map_location if map_location is not None else "cpu")
    try:
        yield
    finally:
        ce.load = original


# ---------------------------------------------------------------------------------------------
# Manifest: size and SHA-256 of every file
# ---------------------------------------------------------------------------------------------


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _my_share(names: list[str], rank: int, world: int) -> list[str]:
    return names[rank::world]


def verify(folder: Path, rank: int = 0, world: int = 1) -> list[str]:
    """What is wrong with checkpoint ``folder`` (empty when it verifies), checked by every rank in
    parallel (each hashes its share of the files). Collective when world > 1."""
    manifest = folder / MANIFEST
    problems: list[str] = []
    listed: dict = {}
    if not manifest.is_file():
        problems.append(f"{MANIFEST} is missing")
    else:
        try:
            listed = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{MANIFEST} is unreadable ({e})")
    if not problems:
        for name in _my_share(sorted(listed), rank, world):
            path = folder / name
            if not path.is_file():
                problems.append(f"{name} is missing")
                continue
            size = path.stat().st_size
            if size != listed[name]["size"]:
                problems.append(f"{name} has {size} bytes, the manifest says {listed[name]['size']} (truncated?)")
            elif file_digest(path)["sha256"] != listed[name]["sha256"]:
                problems.append(f"{name} does not match its SHA-256 in the manifest (damaged or altered)")
        if rank == 0:
            extra = sorted(set(_files(folder)) - set(listed))
            problems += [f"{name} is not in the manifest" for name in extra]
    gathered = all_gather_objects(problems) if world > 1 else [problems]
    return sorted(p for part in gathered for p in part)


def step_of(path: Path) -> int | None:
    m = _STEP.match(path.name)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# The checkpointer
# ---------------------------------------------------------------------------------------------


class Checkpointer:
    def __init__(self, out_dir: str | Path, rank: int, keep_last: int = 3, world_size: int = 1):
        self.root = Path(out_dir) / "ckpt"
        self.rank, self.keep_last, self.world = rank, keep_last, world_size

    # -- what is on disk -----------------------------------------------------------------------

    def steps(self) -> list[Path]:
        """Complete-looking step folders, oldest first (renamed into place only once written)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and step_of(p) is not None]
        return sorted(found, key=step_of)

    def latest(self) -> Path | None:
        """The newest step folder (verified only by :meth:`resume_point`)."""
        found = self.steps()
        return found[-1] if found else None

    def check_writable(self) -> None:
        """Fail now, not at the first save, when checkpoints cannot be written (rank 0 probes)."""
        ok, why = True, ""
        if self.rank == 0:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / f".probe.{os.getpid()}"
                probe.write_bytes(b"svgen")
                probe.unlink()
            except OSError as e:
                ok, why = False, f"{type(e).__name__}: {e.strerror or e}"
        if not all_true(ok):
            raise CheckpointError(f"cannot write checkpoints under '{self.root}' ({why or 'on rank 0'}): make it "
                                  "writable or point train.out_dir elsewhere")

    # -- saving --------------------------------------------------------------------------------

    def save(self, engine, state: TrainerState, generator: torch.Generator | None, config_yaml: str) -> Path:
        tag = f"step_{state.step:07d}"
        tmp_tag = f".tmp_{tag}"
        final, tmp = self.root / tag, self.root / tmp_tag
        if not all_true(not final.exists()):
            raise CheckpointError(f"'{final}' already exists: svgen never overwrites a checkpoint. Move it (and any "
                                  "newer ones) out of the way, or resume from the newest with --resume auto")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
        barrier()
        error = None
        try:
            engine.save_checkpoint(str(self.root), tag=tmp_tag, save_latest=False)
            tensors, meta = _rng_tensors(generator)
            save_file(tensors, str(tmp / f"rng_rank{self.rank}.safetensors"), metadata=meta)
            if self.rank == 0:
                if state.ema is not None:
                    save_file({n: t.contiguous() for n, t in state.ema["shadow"].items()}, str(tmp / EMA_FILE))
                write_json(tmp / TRAINER, {"format": FORMAT, **state.to_json()}, indent=1)
                write_text(tmp / CONFIG, config_yaml)
        except OSError as e:
            error = e
        if not all_true(error is None):
            self._abandon(tmp, tag, error)
        barrier()  # every rank's files are in tmp
        digests: dict = {}
        try:
            for name in _my_share(_files(tmp), self.rank, self.world):
                digests[name] = file_digest(tmp / name, sync=True)
        except OSError as e:
            error = e
        if not all_true(error is None):
            self._abandon(tmp, tag, error)
        gathered = all_gather_objects(digests) if self.world > 1 else [digests]
        if self.rank == 0:
            try:
                files = {k: v for part in gathered for k, v in part.items()}
                write_json(tmp / MANIFEST, {"format": FORMAT, "step": state.step, "files": files}, indent=1)
                os.replace(tmp, final)
                write_text(self.root / "latest", tag)  # the pointer moves last
            except OSError as e:
                error = e
        if not all_true(error is None):
            self._abandon(tmp, tag, error)
        if self.rank == 0:
            for old in self.steps()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def _abandon(self, tmp: Path, tag: str, error: OSError | None) -> None:
        """Remove a half-written checkpoint on every rank and raise, naming the cause."""
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        previous = self.latest()
        kept = f"the previous checkpoint ({previous.name}) is intact" if previous else "no earlier checkpoint exists"
        if error is not None and error.errno == errno.ENOSPC:
            cause = f"no space left on device (ENOSPC) under '{self.root}': free space there, then resume"
        elif error is not None:
            cause = f"{type(error).__name__}: {error}"
        else:
            cause = "another rank could not write its part (see that rank's log)"
        raise CheckpointError(f"checkpoint {tag} was not written: {cause}; {kept}")

    # -- loading -------------------------------------------------------------------------------

    def resume_point(self, log=print) -> Path | None:
        """The newest checkpoint that verifies (collective). Damaged ones are moved aside to
        ``damaged_step_*`` and reported through ``log``; with checkpoints on disk but none
        verifying, raise rather than let the run start over."""
        candidates = self.steps()
        damaged: list[str] = []
        for path in reversed(candidates):
            if not (path / MANIFEST).exists() and (path / "trainer.pt").is_file():
                log(f"checkpoint {path.name} predates checksums (svgen checkpoint format 1): loading it unverified")
                return path
            problems = verify(path, self.rank, self.world)
            if not problems:
                if damaged:
                    if self.rank == 0:
                        write_text(self.root / "latest", path.name)
                    log(f"resuming from {path.name}, the newest checkpoint that verifies")
                return path
            damaged.append(f"{path.name}: {'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}")
            aside = path.with_name(f"damaged_{path.name}")
            if self.rank == 0:
                if aside.exists():
                    aside = path.with_name(f"damaged_{path.name}.{int(time.time())}")
                os.replace(path, aside)
            barrier()
            log(f"checkpoint {path.name} fails verification ({damaged[-1].split(': ', 1)[1]}): moved aside to "
                f"{aside.name}; trying the one before")
        if damaged:
            raise CheckpointError(f"no checkpoint under '{self.root}' verifies ({' | '.join(damaged)}); they were "
                                  "moved aside as damaged_step_*. Restore a good copy as step_NNNNNNN and resume, or "
                                  "run again to start over from step 0")
        return None

    def stored_config(self, path: Path) -> str | None:
        """The config.yaml that trained up to checkpoint ``path`` (None for format-1 checkpoints)."""
        p = path / CONFIG
        return p.read_text() if p.is_file() else None

    def load(self, engine, generator: torch.Generator | None, path: Path) -> TrainerState:
        """Restore the engine, this rank's RNGs and the trainer state from checkpoint ``path``."""
        with _safe_deepspeed_loads(engine):
            try:
                engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=True)
            except CheckpointError:
                raise
            except (RuntimeError, KeyError, ValueError, OSError, EOFError) as e:
                raise CheckpointError(f"cannot load the DeepSpeed state of '{path}' ({type(e).__name__}: "
                                      f"{str(e)[:300]}): was it written with another train.parallel setting or "
                                      "model config? Resume with the settings it was written with.") from e
        if (path / TRAINER).is_file():
            d = json.loads((path / TRAINER).read_text())
            shadow = load_file(str(path / EMA_FILE)) if (path / EMA_FILE).is_file() else None
            state = TrainerState.from_json(d, shadow)
            rng = path / f"rng_rank{self.rank}.safetensors"
            if rng.is_file():
                with safe_open(str(rng), framework="pt") as f:
                    meta = f.metadata()
                _set_rng(load_file(str(rng)), meta, generator)
            return state
        # Format 1: pickles, read with weights_only (plain types and tensors only).
        legacy = safe_torch_load(path / "trainer.pt")
        rng = path / f"rng_rank{self.rank}.pt"
        if rng.is_file():
            _set_legacy_rng(safe_torch_load(rng), generator)
        return TrainerState(step=int(legacy["step"]), data=DataPosition(**legacy["data"]), run_id=legacy.get("run_id"),
                            ema=legacy.get("ema"), flops_per_sample=legacy.get("flops_per_sample"))


def export_weights(path: str | Path, weights: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Trained weights alone as safetensors (atomic)."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp), metadata=metadata or {})
    return Path(path)
