"""One ``init_distributed()`` for every launcher: torchrun, deepspeed, srun and plain python.

torchrun and the deepspeed launcher export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT. Under ``srun`` (one task per GPU) Slurm exports SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID; the rendezvous address comes from MASTER_ADDR / MASTER_PORT, which
slurm/train.sbatch sets from the allocation. A plain ``python`` process becomes a world of one
on 127.0.0.1. The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
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
    out["MASTER_PORT"] = env.get("MASTER_PORT") or str(_free_port() if out["WORLD_SIZE"] == "1" else 29500)
    return out


def init_distributed() -> DistInfo:
    """Initialise the default process group (idempotent) and pick this rank's device."""
    os.environ.update(launcher_env())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, local_rank, world, device, backend)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
