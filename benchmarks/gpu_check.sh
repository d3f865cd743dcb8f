#!/usr/bin/env bash
# One short GPU session (under 9 minutes on an H100/H200, limits included): CUDA correctness of the fused kernels
# (CMC-PE, GEGLU, GroupNorm + SiLU, add + layer norm, gain norm, the token shift) and their speed against eager,
# the training step's kernel-time profile by category (benchmarks/profile_step.py), then its MFU
# (benchmarks/mfu.py) eager and with the fused glue operators at batch 8, and batch 16 with activation
# checkpointing (does it fit in 80 GB?). Every step writes its log under $OUT (or ./runs/gpu_check); a failed or timed-out
# step does not stop the next. Rows print as they are measured, so a cut step keeps its rows.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine with torch, triton, diffusers
#   SKIP_TESTS=1 bash benchmarks/gpu_check.sh
#
# Missing pure-Python packages can be put as wheels in .whl/ (installed to /tmp/site first).
set -u
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -v -E "Loading weights|should be kept in float32|Writing model shards|warn\(|UserWarning" "$OUT/$name.log" | tail -n 40
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, triton, diffusers, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.log"
MFU="python3 benchmarks/mfu.py --warmup 2 --repeats 5"
[ -n "${SKIP_TESTS:-}" ] || step kernels_test 60 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py
# The fused glue operators against the eager ops they replace.
step glue_kernels 40 python3 benchmarks/glue_kernels.py
# Where the step's time goes (issue 23): kernel time by category and the top kernels with their
# launching site, one eager step at batch 8 (the CPU proxy, glue bytes per sample, runs anywhere).
step profile 170 python3 benchmarks/profile_step.py --cuda --no-proxy --batch 8 --top 25
# Each lever alone against eager at batch 8 (the first row is the baseline; every row also shows
# its first loss against eager's): the fused glue operators (model.glue_kernel=triton).
step mfu_levers 120 $MFU --batches 8 --levers eager,glue
# Batch 16 with activation checkpointing as the trainer does it: the peak memory says whether it
# fits an 80 GB card.
step mfu_batch16 100 $MFU --batches 16 --levers ckpt --no-bases
