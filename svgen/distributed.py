"""One ``init_distributed()`` for every launcher: torchrun, deepspeed, srun and plain python.

torchrun and the deepspeed launcher export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT. Under ``srun`` (one task per GPU) Slurm exports SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID; the rendezvous address comes from MASTER_ADDR / MASTER_PORT, which
slurm/train.sbatch sets from the allocation. A plain ``python`` process becomes a world of one
on 127.0.0.1. The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist


@dataclass(kw_only=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a world of one, a test's server, the MLflow UI)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed env variables, derived from whichever launcher started us."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        out = {k: env[k] for k in ("RANK", "WORLD_SIZE")}
        out["LOCAL_RANK"] = env.get("LOCAL_RANK", "0")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
               "LOCAL_RANK": env.get("SLURM_LOCALID", "0")}
        if int(out["WORLD_SIZE"]) > 1 and "MASTER_ADDR" not in env:
            raise RuntimeError("under srun with several tasks, MASTER_ADDR/MASTER_PORT must be set "
                               "(slurm/train.sbatch sets them from the first node of the allocation)")
    else:
        out = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    out["MASTER_ADDR"] = env.get("MASTER_ADDR", "127.0.0.1")
    out["MASTER_PORT"] = env.get("MASTER_PORT") or str(free_port() if out["WORLD_SIZE"] == "1" else 29500)
    return out


@contextlib.contextmanager
def launcher_environ(env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Within: the torch.distributed variables of :func:`launcher_env` in ``os.environ`` (DeepSpeed
    reads LOCAL_RANK there); afterwards ``os.environ`` is as it was, so a second run in the same
    process (a test, a sweep, the ablation) picks its own port instead of inheriting one."""
    env = launcher_env() if env is None else env
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def init_distributed(env: dict[str, str] | None = None) -> DistInfo:
    """Initialise the default process group (idempotent) from ``env`` (default: what the launcher
    exported, see :func:`launcher_env`) and pick this rank's device. ``os.environ`` is not changed."""
    env = launcher_env() if env is None else env
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env["LOCAL_RANK"])
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method=f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
                                rank=rank, world_size=world)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device, backend=backend)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Destroy the default process group. When DeepSpeed set up its groups on it, through
    DeepSpeed, which also drops the groups it cached (else a second run in the same process
    would use them)."""
    if not dist.is_initialized():
        return
    ds_comm = sys.modules.get("deepspeed.comm.comm")
    if ds_comm is not None and getattr(ds_comm, "cdb", None) is not None:
        ds_comm.destroy_process_group()
    else:
        dist.destroy_process_group()


def _flag_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_true(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on every rank (a host sync: for rare decisions such
    as whether a checkpoint was written, never per step)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (small picklable values: file digests, problems).
    These are pickles exchanged between the run's own processes, never read from a file."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
