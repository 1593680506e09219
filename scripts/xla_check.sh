#!/usr/bin/env bash
# Build a torch-xla environment beside the project and run the XLA checks in it, on this machine's CPU
# through PJRT (PJRT_DEVICE=CPU): parity with the torch CPU output for every representation, no host
# fallbacks, and a measured run of +backend=tpu. torch-xla 2.9 needs torch 2.9.x, so this is its own
# virtual environment (about 7 GB: torch 2.9.1 from PyPI is a CUDA build; a few minutes to install).
#
#   scripts/xla_check.sh [venv-dir]        (default: ../xla-venv, outside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-../xla-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    timeout 1800 "$venv/bin/pip" install -q --upgrade pip
fi
timeout 1800 "$venv/bin/pip" install -q "torch==2.9.1" "torch-xla==2.9.0"
timeout 1800 "$venv/bin/pip" install -q -e ".[test]"
export PJRT_DEVICE=CPU TF_CPP_MIN_LOG_LEVEL=3
timeout 300 "$venv/bin/python" -c "import torch, torch_xla; print('torch', torch.__version__, 'torch_xla', torch_xla.__version__)"
timeout 1200 "$venv/bin/python" -m pytest -q -n 0 -p no:cacheprovider tests/test_backend_parity.py -k "xla or cpu_adapter"
tmp=$(mktemp -d)
MLFLOW_TRACKING_URI="sqlite:///$tmp/mlflow.db" timeout 1200 "$venv/bin/python" -m harness +backend=tpu experiment=smoke \
    representation=dhe "workload.query_sizes=[1,64]" "tracking.results_dir=$tmp/results"
MLFLOW_TRACKING_URI="sqlite:///$tmp/mlflow.db" timeout 1200 "$venv/bin/python" - <<'PY'
import mlflow
[run] = mlflow.search_runs(experiment_names=["smoke"], output_format="list")
m = run.data.metrics
print(f"tpu run {run.info.status}: p50 {m['latency_p50_ms']:.3f} ms at the last size, "
      f"steady-state recompilations {m.get('xla_steady_compiles')}, fallback ops {m.get('xla_fallback_ops')}")
assert run.info.status == "FINISHED" and m["xla_steady_compiles"] == 0 and m["xla_fallback_ops"] == 0
PY
rm -rf "$tmp"
echo "xla check: passed"
