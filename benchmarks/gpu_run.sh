#!/usr/bin/env bash
# One short run on a lent GPU machine (see benchmarks/RESULTS.md for what it printed).
# Needs the wheels of the packages its image lacks in .whl/ and tokenizer files in .gpu/tokenizer/.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/service HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import os, torch, transformers, shap; print('torch', torch.__version__, 'transformers', transformers.__version__, 'shap', shap.__version__, 'cores', os.cpu_count())"
bench() {  # name, time limit in seconds, then explain.py's arguments
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" python3 benchmarks/explain.py --bert-base --tokenizer-dir .gpu/tokenizer --device cuda --dtype bfloat16 \
    --json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  grep -v "explained\|Loading weights\|Writing model\|round [0-9]*:" "$OUT/$name.log" | grep -v '^ *"\|^ *[{}],\?$' | tail -14
}
# (a), (b) and (c): 128 texts, 64 callers, batches up to 32,768 tokens.
bench main 300 --texts 128 --callers 64 --baseline-texts 3 \
  --batch-sizes 128,256,512,1024 --server-arg=--max-batch-tokens=32768
# (c) again with the forward passes launched eagerly (main's replays recurring shapes from
# CUDA graphs): what the graphs give (b is the same rows: compare with main's).
bench eager 100 --texts 128 --callers 64 --only-whybert \
  --server-arg=--max-batch-tokens=32768 --server-arg=--no-cuda-graphs
timeout 70 python3 benchmarks/gpu_smoke.py --tokenizer-dir .gpu/tokenizer 2>&1 | grep -v "Loading weights\|Writing model" | tee "$OUT/smoke.log"
