#!/usr/bin/env bash
# One sitting of `sparsity-exp study gpu` on a lent GPU machine, in one call (sized for 3 seeds in ~8 minutes on
# one H100-class GPU; conf/study/gpu.yaml's header says how, unmeasured until this script has run):
#   bash benchmarks/study_gpu.sh                     # study/gpu/report.md, verdicts.csv, figures (copied to $OUT)
#   SEEDS="--seeds auto --max-seeds 10" bash benchmarks/study_gpu.sh   # a later sitting continues (skips done runs)
# Data, offline: DATA_ROOT, else the first of /data, /usr/share/datasets, study/gpu/data that holds CIFAR-10
# (cifar-10-batches-py) or Fashion-MNIST (fashion-mnist/*-ubyte.gz). On a machine without either, carry
# Fashion-MNIST (30 MB) with the working tree first:
#   mkdir -p study/gpu/data && cp -r /usr/share/datasets/fashion-mnist study/gpu/data/   # an ignored path: carry it
# Several runs share the GPU: two arms at once (--arm-jobs), each arm's 3 seeds at once (hydra/launcher=local,
# trainer.jobs_per_gpu=3) when hydra-joblib-launcher is installed, else 6 arms at once, seeds one after another.
# LIMIT (default 480 s) bounds the sitting; what completed is judged either way (--judge-only after a timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/.whl/site:$PWD OMP_NUM_THREADS=2 MPLBACKEND=Agg PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
$PY -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv 2>/dev/null || true
root=${DATA_ROOT:-}
if [ -z "$root" ]; then
    for c in /data /usr/share/datasets "$PWD/study/gpu/data"; do
        if [ -d "$c/cifar-10-batches-py" ] || ls "$c"/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1 \
           || ls "$c"/FashionMNIST/raw/train-images-idx3-ubyte* >/dev/null 2>&1; then root=$c; break; fi
    done
fi
echo "data.root: ${root:-none found (the ViT arms fall back to the embedded digits)}"
if $PY -c "import hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
    share=(hydra/launcher=local trainer.jobs_per_gpu=3 --arm-jobs 2)
else
    share=(--arm-jobs 6)
fi
args=(gpu ${root:+data.root=$root} trainer.device=cuda "${share[@]}" ${SEEDS:-})
echo "study: sparsity-exp study ${args[*]}"
start=$(date +%s)
timeout "${LIMIT:-480}" $PY -m sparsity_exp study "${args[@]}"
rc=$?
echo "=== study exit $rc after $(( $(date +%s) - start )) s wall (the sitting)"
if [ "$rc" = 124 ]; then  # out of time: judge what completed (no GPU needed); a rerun continues the rest
    $PY -m sparsity_exp study gpu ${root:+data.root=$root} --judge-only ${SEEDS:-} | tail -40
fi
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null || true
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/study_gpu" && cp study/gpu/report.md study/gpu/verdicts.csv study/gpu/*.png study/gpu/runs.log "$OUT/study_gpu/" 2>/dev/null
fi
