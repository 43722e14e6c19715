#!/usr/bin/env bash
# Issue 29's GPU checks in one call (about 8 minutes; each step has its own timeout):
#   bash benchmarks/gpu_probes.sh        # figures printed, JSON and traces in ${OUT:-benchmarks/out}/
#  1. LN-MLP batch 32: bare loop vs probes=none,cheap,default in alternating rounds (targets on a GPU:
#     default >= 0.90 of bare, cheap <= 1.05 x none, with the intervals benchmarks/rounds.py gives);
#  2. where probes=default spends a step there (torch.profiler, CUDA kernels and host syncs; trace);
#  3. ViT-B/16 bf16 and T5-Base with probes=cheap: MFU (targets 40% and 25%) and host syncs in non-log steps.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
$PY -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv 2>/dev/null
uptime
# offline stand-ins in the datasets' own formats (as benchmarks/device_all.sh): CIFAR batches, C4 shards
$PY - <<'PY'
from pathlib import Path
from tests.test_vision_data import write_cifar
from tests.test_text_data import _write_c4_shard
write_cifar(Path("/tmp/cifar"), per_batch=256)
docs = [("Paper scale check document %d, some words to make it long. " % i) * 30 for i in range(4000)]
_write_c4_shard(Path("/tmp/c4/c4-train.00000-of-01024.json.gz"), docs[:3800])
_write_c4_shard(Path("/tmp/c4/c4-validation.00000-of-00008.json.gz"), docs[3800:])
PY
timeout 150 $PY benchmarks/throughput.py --budget-s 90 --block-s 0.5 --presets none,cheap,default \
    --json "$OUT/mlp_b32_presets.json" model=mlp trainer.batch_size=32 || echo "=== mlp presets failed (rc $?)"
timeout 90 $PY benchmarks/profile_probes.py --preset default --periods 5 --out "$OUT" model=mlp trainer.batch_size=32 \
    || echo "=== profile failed (rc $?)"
timeout 150 $PY benchmarks/throughput.py --rounds 3 --presets none,cheap --json "$OUT/vit_b16_cheap.json" \
    model=vit_b16 data.root=/tmp/cifar data.verify=false trainer.batch_size=256 trainer.precision=bf16 ${VIT_ARGS:-} || echo "=== vit_b16 failed (rc $?)"
timeout 150 $PY benchmarks/throughput.py --rounds 3 --presets none,cheap --json "$OUT/t5_base_cheap.json" \
    model=t5_base data.root=/tmp/c4 trainer.batch_size=64 trainer.precision=bf16 ${T5_ARGS:-} || echo "=== t5_base failed (rc $?)"
