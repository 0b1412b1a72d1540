#!/usr/bin/env bash
# The prepared GPU check (<= 8 min; what it measures: benchmarks/gpu_check.py). Needs a GPU,
# TensorFlow's GPU build and Graft's dependencies; the Graft image has them:
#   docker run --gpus all -e OUT=/tmp/gpu REGISTRY/graft:0.1.0 benchmarks/gpu_check.sh
# Prints one JSON line and writes $OUT/gpu_check.json (OUT defaults to benchmarks/results).
# GPU_CHECK_SMOKE=1 runs it tiny on the CPU (tests/test_gpu_check.py does). PY picks the Python.
# It installs nothing: GPU nodes are often offline, and a pip retry loop would eat the lease.
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-benchmarks/results}"
PY="${PY:-python3}"
if ! missing=$($PY - <<'EOF'
import importlib.util, sys
gone = [m for m in ("tensorflow", "keras", "apache_beam", "pydantic", "PIL") if importlib.util.find_spec(m) is None]
print(", ".join(gone))
sys.exit(1 if gone else 0)
EOF
); then
  echo "gpu_check: cannot run with $PY: missing Python packages: $missing." \
       "Run it in the Graft image (Dockerfile), or after 'pip install .' plus TensorFlow's GPU build" \
       "(pip install 'tensorflow[and-cuda]>=2.21,<2.22')." >&2
  exit 3
fi
exec timeout 450 $PY -m benchmarks.gpu_check
