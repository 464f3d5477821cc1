#!/usr/bin/env bash
# (c) with more explanations in flight: 64 callers cannot fill a GPU batch (~180 rows a batch).
# Needs gpu_run.sh's wheels in .whl/ and tokenizer in .gpu/tokenizer/.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/service HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
for callers in 256; do for tokens in 32768 131072; do
  timeout 110 python3 benchmarks/explain.py --bert-base --tokenizer-dir .gpu/tokenizer --device cuda --dtype bfloat16 \
    --texts 768 --callers $callers --only-whybert --port 5$((callers % 10))7$((tokens % 7)) --server-arg=--max-batch-tokens=$tokens \
    --json "$OUT/c_${callers}_${tokens}.json" > "$OUT/c_${callers}_${tokens}.log" 2>&1
  echo "callers $callers tokens $tokens: $(grep '(c) [0-9.]* s per' "$OUT/c_${callers}_${tokens}.log")"
done; done
