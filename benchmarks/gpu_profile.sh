#!/usr/bin/env bash
# Where the server's time goes under (c) on the GPU: py-spy samples every thread of the server.
# Needs gpu_run.sh's wheels in .whl/ and tokenizer in .gpu/tokenizer/, and the py-spy wheel in .spy/.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .spy/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/service HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PATH=/tmp/site/bin:$PATH
( for i in $(seq 1 120); do
    pid=$(pgrep -f "whybert_service.cli serve" | head -1)
    if [ -n "$pid" ] && grep -q "explained" "$OUT/prof.log" 2>/dev/null; then
      py-spy record --pid "$pid" --duration 8 --rate 200 --format raw --output "$OUT/spy.txt" --nonblocking > "$OUT/spy.log" 2>&1
      py-spy dump --pid "$pid" > "$OUT/dump.txt" 2>&1; break
    fi; sleep 0.5; done ) &
timeout 150 python3 benchmarks/explain.py --bert-base --tokenizer-dir .gpu/tokenizer --device cuda --dtype bfloat16 \
  --texts 256 --callers 64 --only-whybert --server-arg=--max-batch-tokens=32768 > "$OUT/prof.log" 2>&1
wait
grep "(c) [0-9.]* s per" "$OUT/prof.log"; cat "$OUT/spy.log" | tail -3; wc -l "$OUT/spy.txt"
