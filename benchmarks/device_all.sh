#!/usr/bin/env bash
# Every GPU check of the project in one prepared command, for a lent GPU machine (about 7 minutes):
#   bash benchmarks/device_all.sh      # logs and JSON figures under ${OUT:-benchmarks/out}/
# Where hydra-core/omegaconf are missing (the lent machines' image), their wheels travel in .whl/.
# Each part has its own timeout, so one failure does not eat the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site:$PWD OMP_NUM_THREADS=8 MPLBACKEND=Agg PYTHONUNBUFFERED=1
python3 -c "import torch, torchvision, transformers; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__, '|', torch.cuda.get_device_name())"
part() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  tail -n "${TAIL:-12}" "$OUT/$name.log"; echo "=== $name: rc $rc, $((SECONDS - t0)) s"; }
# paper-format data written by the tests' own writers: CIFAR-10 python batches, C4 json.gz shards
python3 - <<'PY'
from pathlib import Path
from tests.test_vision_data import write_cifar
from tests.test_text_data import _write_c4_shard
write_cifar(Path("/tmp/cifar"), per_batch=256)
docs = [("Paper scale check document %d, some words to make it long. " % i) * 30 for i in range(4000)]
_write_c4_shard(Path("/tmp/c4/c4-train.00000-of-01024.json.gz"), docs[:3800])
_write_c4_shard(Path("/tmp/c4/c4-validation.00000-of-00008.json.gz"), docs[3800:])
PY
R="trainer.progress=false results_dir=/tmp/r"
part cuda_resume 90 python3 benchmarks/gpu_resume_check.py
part interventions 100 python3 benchmarks/interventions_device_check.py --out /tmp/iv
TAIL=20 part bench_mlp 90 python3 benchmarks/throughput.py --budget-s 20 --rounds 2 --json "$OUT/mlp.json" \
    model=mlp trainer.batch_size=256
TAIL=20 part bench_vit_b16 170 python3 benchmarks/throughput.py --budget-s 45 --rounds 2 --json "$OUT/vit_b16.json" \
    model=vit_b16 data.root=/tmp/cifar data.verify=false trainer.batch_size=256 trainer.precision=bf16 $R
TAIL=20 part bench_t5_base 170 python3 benchmarks/throughput.py --budget-s 45 --rounds 2 --json "$OUT/t5_base.json" \
    model=t5_base data.root=/tmp/c4 trainer.batch_size=64 trainer.precision=bf16 $R
# many tiny runs sharing the GPU (trainer.jobs_per_gpu, the local launcher): aggregate vs one run
TAIL=6 part gpu_share 150 python3 benchmarks/gpu_share.py --jobs 8 --steps 3000 --json "$OUT/gpu_share.json"
# Hessian products batched on the GPU vs PyHessian, spectra on the device (peers skipped if absent;
# pyhessian is pure Python: its wheel can travel in .whl/)
TAIL=14 part peers 120 python3 benchmarks/peers.py --device cuda --repeats 3 --json "$OUT/peers.json"
