#!/usr/bin/env bash
# One short run on a lent GPU machine (see benchmarks/RESULTS.md for what it printed).
# Needs the wheels of the packages its image lacks in .whl/ and tokenizer files in .gpu/tokenizer/.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/service HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import os, torch, transformers, shap; print('torch', torch.__version__, 'transformers', transformers.__version__, 'shap', shap.__version__, 'cores', os.cpu_count())"
timeout 150 python3 benchmarks/explain.py --bert-base --tokenizer-dir .gpu/tokenizer --device cuda --dtype bfloat16 \
  --texts 48 --callers 32 --baseline-texts 3 \
  --server-arg=--max-batch-tokens=32768 --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
grep -v "explained\|Loading weights\|Writing model" "$OUT/bench.log" | tail -34
timeout 55 python3 benchmarks/gpu_smoke.py --tokenizer-dir .gpu/tokenizer 2>&1 | grep -v "Loading weights\|Writing model" | tee "$OUT/smoke.log"
