# Cluster specifics for slurm/*.sbatch: copy to slurm/env.local.sh (sourced if present) and edit.
# Nothing here is read by svgen/ itself.
export SVGEN_ROOT="${SVGEN_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export SVGEN_PYTHON="${SVGEN_PYTHON:-$SVGEN_ROOT/.venv/bin/python}"
export SVGEN_LOG_DIR="${SVGEN_LOG_DIR:-$SVGEN_ROOT/runs/slurm}"
export MASTER_PORT="${MASTER_PORT:-29500}"
export RAY_PORT="${RAY_PORT:-6379}"
export RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
# NCCL on InfiniBand clusters usually wants something like:
# export NCCL_IB_HCA=mlx5 NCCL_SOCKET_IFNAME=ib0
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
