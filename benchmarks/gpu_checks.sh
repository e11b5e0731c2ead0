#!/usr/bin/env bash
# Every GPU check in one run, to start as is when a GPU machine is lent (about 6 minutes on
# an H100/H200; the device tool allows 10 per command):
#   1. the kernel tests natively on CUDA (Triton) beside the CPU ones;
#   2. the Triton kernel benchmarks (GEMV, neuron FFN, statistical top-k; bf16 and fp16);
#   3. the end-to-end decode benchmark: a SmolLM2-135M-shaped model (random weights: the
#      machine cannot fetch any), top-K at 50% and 90% on every block linear, the model's
#      forward and the flat step, in bf16 and fp16.
# Parquet rows land in benchmarks/results/ (and in $OUT, when the device tool sets it).
#
#   bash benchmarks/gpu_checks.sh            # from the repository root
#
# The machine's own python3 holds torch, triton and transformers; the harness runs from
# src/ (PYTHONPATH), and what it lacks there is named before anything runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" TRITON_INTERPRET=0
PY=${PYTHON:-python3}

missing=$($PY - <<'EOF'
import importlib.util
need = ["torch", "triton", "transformers", "pandas", "pyarrow", "omegaconf", "pytest"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "gpu_checks: missing Python packages: $missing (carry them as wheels; see the device tool's README)" >&2
  exit 2
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)"

start=$SECONDS
echo "== 1/3 kernel tests (CUDA and CPU)"
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/unit/test_kernels.py \
  tests/unit/test_sparse_linear.py tests/unit/test_decode_latency.py tests/unit/test_decode_step.py \
  || echo "gpu_checks: kernel tests FAILED (see above)"
echo "== 2/3 Triton kernel benchmarks ($((SECONDS - start)) s so far)"
timeout 180 $PY benchmarks/kernel_speed.py --device cuda --dtypes bfloat16 float16 --batch 1 8
echo "== 3/3 end-to-end decode ($((SECONDS - start)) s so far)"
timeout 150 $PY benchmarks/decode_speed.py benchmarks/configs/smollm2-135m --random \
  --device cuda --dtypes bfloat16 float16 --levels 0.5 0.9 --paths fused --steps hf flat
echo "== done in $((SECONDS - start)) s"
if [ -n "${OUT:-}" ]; then
  cp benchmarks/results/kernel_speed.parquet benchmarks/results/decode_speed.parquet "$OUT"/
fi
