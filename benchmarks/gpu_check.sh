#!/usr/bin/env bash
# One short GPU session: CUDA correctness of the CMC-PE kernels, then the kernel benchmark and
# the training-step (adapter overhead) benchmark at real base sizes. Every step writes its log
# under $OUT (or ./runs/gpu_check) and a failed step does not stop the next.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine with torch, triton, diffusers
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
  grep -v -E "Loading weights|should be kept in float32" "$OUT/$name.log" | tail -n 40
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, triton, diffusers, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.log"
[ -n "${SKIP_TESTS:-}" ] || step kernels_test 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py
step kernel_bench_bf16 200 python3 benchmarks/cmcpe_kernel.py --dtype bfloat16 --iters 20 --sweep
step train_step 240 python3 benchmarks/model_overhead.py --only full-size --kernels reference,triton --repeats 10
# What the reference's head width of 8 costs (issue 11): the same step with 64-wide heads, for
# CMC-PE and for the cross-attention baseline (the default runs above use head_dim 8).
step head_dim64 150 python3 benchmarks/model_overhead.py --only full-size --kernels triton --repeats 5 --set model.cmcpe.head_dim=64
step xattn_head_dim 200 bash -c "python3 benchmarks/model_overhead.py --only full-size --kernels reference --repeats 5 --set model.cmcpe.mode=xattn_pooled && python3 benchmarks/model_overhead.py --only full-size --kernels reference --repeats 5 --set model.cmcpe.mode=xattn_pooled --set model.cmcpe.head_dim=64"
