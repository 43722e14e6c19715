#!/usr/bin/env bash
# The GPU throughput check in one command, for a lent GPU machine (about 6-8 minutes in all):
#   bash benchmarks/gpu.sh            # figures printed, JSON files in ${OUT:-benchmarks/out}/
# Each benchmark has its own timeout, so one failure does not eat the others' time. The ViT-B/16 and
# T5-Base lines run once conf/model/vit.yaml and conf/model/t5.yaml exist (issue 4); adjust their
# overrides with VIT_ARGS / T5_ARGS (paper batches: ViT micro-batch 64 of 2048, T5 batch 256).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/out}
BUDGET=${BUDGET:-40}
mkdir -p "$OUT"
$PY -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"

bench() {  # name, then overrides
    local name=$1; shift
    echo "=== $name: $*"
    timeout "${LIMIT:-180}" $PY benchmarks/throughput.py --budget-s "$BUDGET" --rounds 2 --json "$OUT/$name.json" "$@" \
        || echo "=== $name failed or ran out of time (rc $?)"
}

bench mlp_b256 model=mlp trainer.batch_size=256
bench mlp_b256_compiled model=mlp trainer.batch_size=256 trainer.compile=true
if [ -f conf/model/vit.yaml ]; then
    bench vit_b16 model=vit trainer.batch_size=64 trainer.precision=bf16 ${VIT_ARGS:-}
else echo "=== vit_b16 skipped: no conf/model/vit.yaml"; fi
if [ -f conf/model/t5.yaml ]; then
    bench t5_base model=t5 trainer.batch_size=256 trainer.precision=bf16 ${T5_ARGS:-}
else echo "=== t5_base skipped: no conf/model/t5.yaml"; fi
