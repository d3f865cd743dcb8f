#!/usr/bin/env bash
# One short GPU session (under 9 minutes on an H100/H200, limits included): CUDA correctness of the CMC-PE kernels,
# the kernel benchmark, then the training step's MFU (benchmarks/mfu.py) per speed lever at the
# paper's shapes, batch 16 with activation checkpointing (does it fit in 80 GB?), and the
# compiled step. Every step writes its log under $OUT (or ./runs/gpu_check); a failed or timed-out
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
step kernel_bench 45 python3 benchmarks/cmcpe_kernel.py --dtype bfloat16 --iters 20
# Each lever alone against eager at batch 8 (the first row is the baseline; every row also shows
# its first loss against eager's). Measured on an H200 (RESULTS.md): channels_last 0.94x, fused
# AdamW 1.00x; cuDNN attention first did not finish inside its share of the limit.
step mfu_levers 120 $MFU --batches 8 --levers eager,fused,cudnn
# Batch 16 with activation checkpointing as the trainer does it: the peak memory says whether it
# fits an 80 GB card (sized on CPU at 57.7 GiB above the weights: benchmarks/activation_memory.py).
step mfu_batch16 90 $MFU --batches 16 --levers ckpt --no-bases
# Compiled regions against eager in the same process, at batch 4 (compiling the full-size regions
# took over 150 s on an H200: the step needs most of its limit for that).
step mfu_compile 220 $MFU --batches 4 --levers eager,compile --no-bases
# MLflow's GPU system metrics (issue 14) through nvidia-ml-py: a 4 s run sampled every second
# (needs mlflow and nvidia-ml-py on the machine, or their wheels in .whl/).
step mlflow_gpu_metrics 40 python3 -c "
import time, tempfile, mlflow
from svgen.tracking import MLflowTracker
uri = 'sqlite:///' + tempfile.mkdtemp() + '/m.db'
t = MLflowTracker(uri, 'gpu', 'probe', system_metrics_interval=1); time.sleep(4); t.close()
mlflow.set_tracking_uri(uri)
keys = sorted(k for k in mlflow.get_run(t.run_id).data.metrics if 'gpu' in k)
print('gpu system metrics:', keys); assert keys, 'no system/gpu_* metric'"
