#!/usr/bin/env bash
# The peers of benchmarks/torchrec_compare.py: TorchRec 1.8 and fbgemm-gpu-cpu 1.8, built for torch 2.13.
# They pin torch exactly (and would pull a CUDA build), so they go in with --no-deps beside the torch you
# have; their own light needs after. Not core dependencies: the harness never imports them.
#   scripts/install_bench.sh [python]
set -euo pipefail
py="${1:-python}"
torch_version=$("$py" -c "import torch; print(torch.__version__.split('+')[0])")
case "$torch_version" in
    2.13.*) ;;
    *) echo "torchrec 1.8 / fbgemm-gpu-cpu 1.8 are built for torch 2.13; this environment has torch $torch_version" >&2
       exit 1 ;;
esac
timeout 1800 "$py" -m pip install -q --no-deps "fbgemm-gpu-cpu==1.8.0" "torchrec==1.8.0"
timeout 1800 "$py" -m pip install -q tensordict "torchmetrics==1.0.3" tqdm pyre-extensions
"$py" -c "import torchrec, fbgemm_gpu; print('torchrec', torchrec.__version__, 'fbgemm_gpu', fbgemm_gpu.__version__)"
