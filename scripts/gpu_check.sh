#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, exercise the CUDA backend for real and record the GPU's
# latency profiles for the serving study (the second device of MP-Rec's CPU-GPU system).
#   1. the environment: nvidia-smi, torch, `python -m backends`;
#   2. tests/test_backend_parity.py -k cuda: every representation on CUDA
#      equals the torch CPU output, torch.compile too, a real CUDA out-of-memory is recorded infeasible
#      while the ladder goes on, and every representation in bf16, fp16 and TF32 is within its tolerance
#      of fp32 (harness/workload/precision.py: PARITY_TOLERANCE);
#   3. the headline's paths measured on CUDA: `experiment=mprec_headline +backend=cuda train.steps=0`
#      (latency does not depend on the weights' values; the harness trains on the host whatever the
#      backend, so the serving study takes each representation's accuracy from its CPU run);
#   4. their profiles written to <out>/gpu_profiles.json, with the device and versions as provenance,
#      for `python -m harness.serving serving=mprec_headline profile_files=[...]` (docs/serving.md);
#      the H200's is harness/serving/data/gpu_profiles_h200.json (serving=mprec_headline_h200).
#
#   scripts/gpu_check.sh [out-dir]      (default: $OUT where set, else results/gpu_check)
#
# Needs torch with CUDA, hydra-core and mlflow (pip install -e .). A machine without them but with a
# folder .whl/ of wheels (hydra-core, omegaconf, antlr4, mlflow-skinny and its needs) installs those into
# /tmp/site first; nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-results/gpu_check}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
py=${PYTHON:-python3}
backend=${GPU_CHECK_BACKEND:-cuda}  # cpu: a rehearsal of this script on a machine with no GPU
export GPU_CHECK_BACKEND=$backend
if ! $py -c "import hydra, mlflow" 2>/dev/null && [ -d .whl ]; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/nvidia-smi.csv"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
$py -m backends | tee "$out/backends.txt"

step "parity and out-of-memory tests on CUDA"
$py -m pytest -q -p no:cacheprovider -o addopts= tests/test_backend_parity.py -k cuda 2>&1 | tee "$out/pytest_cuda.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "DHE hash strategies on CUDA (Kaggle's 26 tables, k=1024, query size 1024; CUDA events, median of 20)"
$py - <<'PY' 2>&1 | tee "$out/dhe_hash_cuda.txt" || status=1
import os, statistics, torch
if os.environ["GPU_CHECK_BACKEND"] != "cuda":
    raise SystemExit("skipped: not cuda")
from harness.workload.representations.dhe import DheParams, hashing
from harness.workload.representations.dhe.module import DeepHashEmbedding
params = DheParams(k=1024, decoder=[1024, 128], m=1_000_000, encoding="uniform", activation="none",
                   batch_norm=False, seed=0)
module = DeepHashEmbedding(range(26), params, dim=16).cuda().eval()
ids = torch.randint(0, 10**7, (1024, 26, 1), device="cuda")
flat = ids.permute(1, 0, 2).reshape(26, -1)
a, b, p, m = module.hash_a, module.hash_b, module.p, module.m
strategies = {
    "float64, CPU-sized chunks": lambda: hashing.codes_float64(flat, a, b, p, m, "uniform"),
    "float64, one pass": lambda: hashing.codes_float64(flat, a, b, p, m, "uniform", chunk_elements=1 << 62),
    "int64 (what a GPU's capabilities choose)": lambda: hashing.code(hashing.buckets_int64(flat, a, b, p, m), "uniform", m),
}
reference = hashing.code(module.hash(flat), "uniform", m)
for label, encode in strategies.items():
    assert torch.equal(encode(), reference), label
    times = []
    for _ in range(23):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(); module.decode(encode()); end.record(); torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    print(f"{label:42s} forward {statistics.median(times[3:]):8.3f} ms")
PY

step "headline paths on CUDA"
work=$(mktemp -d)
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
$py -m harness experiment=mprec_headline "+backend=$backend" train.steps=0 serving_after_sweep=null \
    "tracking.results_dir=$work/results" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$out/headline_cuda.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "GPU profiles"
$py - "$out" <<'PY' || status=1
import os, platform, sys
import torch
from harness.analysis.runs import join_quality, tidy
from harness.core.schema import TrackingConfig
from harness.serving import profiles as prof
from harness.tracking import Store

out = sys.argv[1]
runs = Store(TrackingConfig(uri=None, results_dir="unused", parent_run_id=None), "mprec_headline", create=False).load_runs()
profiles = [p for p in prof.from_runs(join_quality(tidy(runs))) if p.path.endswith("@" + os.environ["GPU_CHECK_BACKEND"])]
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
prof.save(profiles, f"{out}/gpu_profiles.json", {
    "source": f"measured on {device} by scripts/gpu_check.sh (experiment=mprec_headline +backend={os.environ['GPU_CHECK_BACKEND']} train.steps=0)",
    "device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "backend": os.environ["GPU_CHECK_BACKEND"], "python": platform.python_version()})
for p in profiles:
    print(p.path, dict(zip(p.sizes, (round(v, 4) for v in p.latency_ms))))
assert {p.path.split("@")[0] for p in profiles} == {"table", "tt", "dhe", "hybrid"}, [p.path for p in profiles]
PY
cp "$work/mlflow.db" "$out/gpu_mlflow.db" 2>/dev/null
cp "$work"/results/mprec_headline/analysis/paths.csv "$out/gpu_paths.csv" 2>/dev/null
echo; [ $status = 0 ] && echo "gpu check: passed" || echo "gpu check: FAILED"
exit $status
