#!/usr/bin/env bash
# Why a server batch costs more than a lone forward on the GPU: gpu_forward.py's timings,
# then (b) and (c) as gpu_run.sh measures them, then py-spy with native frames on the server.
# Needs gpu_run.sh's wheels in .whl/, tokenizer files in .gpu/tokenizer/, the py-spy wheel in .spy/.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .spy/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/service HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
echo "== forward"
timeout 150 python3 benchmarks/gpu_forward.py --tokenizer-dir .gpu/tokenizer --json "$OUT/forward.json" > "$OUT/forward.log" 2>&1
grep -v "Loading weights\|Writing model\|^USDT" "$OUT/forward.log" | cut -c1-140 | head -60
echo "== (b) and (c)"
timeout 170 python3 benchmarks/explain.py --bert-base --tokenizer-dir .gpu/tokenizer --device cuda --dtype bfloat16 \
  --json "$OUT/main.json" --texts 128 --callers 64 --skip-baseline --batch-sizes 128,1024 \
  --server-arg=--max-batch-tokens=32768 > "$OUT/main.log" 2>&1
grep -v "explained\|Loading weights\|Writing model\|round [0-9]*:" "$OUT/main.log" | grep -v '^ *"\|^ *[{}],\?$' | tail -12
echo "== py-spy --native"
( for i in $(seq 1 120); do
    pid=$(pgrep -f "whybert_service.cli serve" | head -1)
    if [ -n "$pid" ] && grep -q "explained" "$OUT/prof.log" 2>/dev/null; then
      py-spy record --pid "$pid" --duration 6 --rate 100 --native --format raw --output "$OUT/spy.txt" --nonblocking > "$OUT/spy.log" 2>&1
      py-spy dump --native --pid "$pid" > "$OUT/dump.txt" 2>&1; break
    fi; sleep 0.5; done ) &
timeout 110 python3 benchmarks/explain.py --bert-base --tokenizer-dir .gpu/tokenizer --device cuda --dtype bfloat16 \
  --texts 256 --callers 64 --only-whybert --server-arg=--max-batch-tokens=32768 > "$OUT/prof.log" 2>&1
wait
grep "(c) [0-9.]* s per" "$OUT/prof.log"; tail -3 "$OUT/spy.log"; wc -l "$OUT/spy.txt"
