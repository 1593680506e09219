#!/usr/bin/env bash
# The GPU check (about 6 minutes on an H100/H200; at most 8): exercise the CUDA backend for real, then
# measure MP-Rec's headline on this one CPU-GPU machine and run the serving study on it.
#   1. env.txt          nvidia-smi, torch, `python -m backends`, the host CPU
#   2. pytest_cuda.txt  tests/test_backend_parity.py -k cuda: every representation on CUDA equals the CPU
#                       output (torch.compile too), each in bf16, fp16 and TF32 within its tolerance, a
#                       real out-of-memory recorded infeasible while the ladder goes on
#   3. dhe_hash_cuda.txt  DHE's hash strategies on CUDA (equal buckets, time of each)
#   4. headline.log     the headline's four paths (experiment=mprec_headline, train.steps=0) on the host
#                       CPU (all its physical cores) and on the GPU eager and with CUDA graphs, one store;
#                       then DHE at 4096 and 16384 in TF32 and bf16 against the GEMM peaks of each
#   5. headline_profiles.json  one profile file: every CPU and GPU path (the best mode per size), the
#                       accuracy of each from the CPU training runs named in $GPU_CHECK_ACCURACY
#                       (harness/serving/data/headline_accuracy.json), provenance (host CPU, cores, GPU,
#                       versions, modes)
#   6. serving.md       the serving study on that file: every policy, with and without device batching
#   7. mlflow.db        the store of the runs above
#
#   scripts/gpu_check.sh [out-dir]      (default: $OUT where set, else results/gpu_check)
#   GPU_CHECK_BACKEND=cpu scripts/gpu_check.sh    a rehearsal on a machine with no GPU (CPU twice)
#
# Needs torch with CUDA, hydra-core and mlflow (pip install -e .). A machine without them but with a
# folder .whl/ of wheels (hydra-core, omegaconf, antlr4, mlflow-skinny and its needs) installs those into
# /tmp/site first; nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-results/gpu_check}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# Every step bounded (a hung CUDA call or server must not hold the lent machine): STEP_TIMEOUT_S a command
py="timeout ${STEP_TIMEOUT_S:-900} ${PYTHON:-python3}"
backend=${GPU_CHECK_BACKEND:-cuda}  # cpu: a rehearsal of this script on a machine with no GPU
accuracy=${GPU_CHECK_ACCURACY:-harness/serving/data/headline_accuracy.json}
export GPU_CHECK_BACKEND=$backend GPU_CHECK_ACCURACY=$accuracy
if ! $py -c "import hydra, mlflow" 2>/dev/null && [ -d .whl ]; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
begin=$(date +%s)
step() { echo; echo "=== $* ($(date +%T), $(( $(date +%s) - begin )) s in)"; }
cores=$($py -c "from harness.core.host import physical_cores; print(physical_cores())")

step environment
{
    timeout 60 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    $py -c "from harness.core.host import cpu_model_name, numeric_flags; print('host CPU', cpu_model_name(), '$cores physical cores', ','.join(numeric_flags()))"
    $py -m backends
} 2>&1 | tee "$out/env.txt"

step "parity, precision and out-of-memory tests on CUDA"
$py -m pytest -q -p no:cacheprovider -o addopts= tests/test_backend_parity.py -k cuda 2>&1 | tee "$out/pytest_cuda.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "DHE hash strategies on CUDA (Kaggle's 26 tables, k=1024, query size 1024; CUDA events, median of 20)"
$py - <<'PY' 2>&1 | tee "$out/dhe_hash_cuda.txt" || status=1
import os, statistics, torch
if os.environ["GPU_CHECK_BACKEND"] != "cuda":
    print("skipped: not cuda")
    raise SystemExit(0)
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

work=$(mktemp -d)
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
common=(experiment=mprec_headline experiment_name=gpu_check train.steps=0 serving_after_sweep=null
        analysis_after_sweep=false measure.min_time_s=0.5 measure.max_time_s=3 "tracking.results_dir=$work/results")
step "headline paths on the host CPU ($cores cores) and the GPU (eager and CUDA graphs), one store"
{   # a subshell (the pipe): its failures leave through its exit status, not through $status
    failed=0
    $py -m harness "${common[@]}" +backend=cpu "backend.num_threads=$cores" ${GPU_CHECK_ARGS:-} || failed=1
    if [ "$backend" = cuda ]; then
        $py -m harness "${common[@]}" +backend=cuda backend.graphs=false,true ${GPU_CHECK_ARGS:-} || failed=1
        step "DHE at 4096 and 16384 in TF32 and bf16 (graphs), against the GEMM peak of each precision"
        $py -m harness "${common[@]}" +backend=cuda backend.graphs=true representation=dhe precision=tf32,bf16 \
            "workload.query_sizes=[4096,16384]" measure.device_peaks=true || failed=1
    fi
    exit $failed
} 2>&1 | tee "$out/headline.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "one profile file: host CPU and GPU, best mode per size, donor accuracies"
$py - "$out" "$work" <<'PY' || status=1
import json, os, platform, sys, time
import torch
from harness.analysis.runs import join_quality, tidy
from harness.core.host import cpu_model_name, numeric_flags, physical_cores
from harness.core.conf import compose
from harness.pipeline.config import load_config
from harness.serving import profiles as prof
from harness.tracking import Store

out, work = sys.argv[1], sys.argv[2]
store = Store(load_config(compose([f"tracking.results_dir={work}"])).tracking, "gpu_check", create=False)
runs = join_quality(tidy(store.load_runs()))
headline = runs[runs["query_size"] <= 1024]  # the DHE limit runs (4096, 16384) are reported, not served
profiles = prof.from_runs(headline)
donors = json.loads(open(os.environ["GPU_CHECK_ACCURACY"]).read()) if os.path.isfile(os.environ["GPU_CHECK_ACCURACY"]) else None
if donors:
    profiles = prof.with_donor_accuracy(profiles, donors)
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (rehearsal)"
provenance = {
    "source": f"measured on one machine by scripts/gpu_check.sh ({time.strftime('%Y-%m-%d')})",
    "host_cpu": cpu_model_name(), "host_cores": physical_cores(), "host_numeric_flags": numeric_flags(),
    "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
    "modes": sorted(set(runs["mode"])), "accuracy": donors["provenance"] if donors else "none: no donors file",
    "commands": "experiment=mprec_headline train.steps=0, +backend=cpu backend.num_threads=<cores>; "
                "+backend=cuda backend.graphs=false,true",
}
prof.save(profiles, f"{out}/headline_profiles.json", provenance)
for p in profiles:
    print(f"{p.path:28s} acc {p.accuracy}  " + " ".join(f"{q}:{v:.3f}" for q, v in zip(p.sizes, p.latency_ms)))
    print(f"{'':28s} {p.source}")
limits = runs[runs["query_size"] >= 4096]
for _, r in limits.iterrows():
    peak = r["device_gemm_gflops"]
    gflops = r["flops_per_sample"] * r["samples_per_s"] / 1e9
    print(f"{r['path']} q={int(r['query_size'])}: p50 {r['p50_ms']:.2f} ms, {gflops:,.0f} GFLOP/s = "
          f"{gflops / peak:.0%} of the measured {peak:,.0f} GFLOP/s GEMM peak of its precision")
PY
cp "$work/mlflow.db" "$out/mlflow.db" 2>/dev/null

step "serving study on this machine's profiles (MLPerf query sizes, p99 <= 10 ms)"
$py -m harness.serving experiment_name=gpu_check_files_only "profile_files=[$out/headline_profiles.json]" \
    sizes.kind=mlperf target_ms=10 log_to_mlflow=false "output_dir=$work/serving" \
    "tracking.results_dir=$work/results" ${GPU_CHECK_SERVING_ARGS:-} 2>&1 | tail -40
[ "${PIPESTATUS[0]}" = 0 ] || status=1
cp "$work/serving/serving.md" "$out/serving.md" 2>/dev/null

echo; echo "$(( $(date +%s) - begin )) s; files in $out: $(ls "$out" | wc -l)"
[ $status = 0 ] && echo "gpu check: passed" || echo "gpu check: FAILED"
exit $status
