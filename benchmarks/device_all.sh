#!/usr/bin/env bash
# Every GPU check of the project in one prepared command, for a lent GPU machine (about 7 minutes):
#   bash benchmarks/device_all.sh      # logs and JSON figures under ${OUT:-benchmarks/out}/
# Where hydra-core/omegaconf are missing (the lent machines' image), their wheels travel in .whl/.
# Each part has its own timeout, so one failure does not eat the others' time.
# ONLY=<regex> runs only the parts whose names match, e.g. ONLY=compiled_ (about 6 minutes: the
# compiled-model parts, which with the rest exceed one 10-minute device command) or ONLY='^(cuda|inter|bench)'.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site:$PWD OMP_NUM_THREADS=8 MPLBACKEND=Agg PYTHONUNBUFFERED=1
python3 -c "import torch, torchvision, transformers; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__, '|', torch.cuda.get_device_name())"
part() { local name=$1 limit=$2; shift 2; [[ $name =~ ${ONLY:-.} ]] || return 0; echo "=== $name"; local t0=$SECONDS
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
# Compile and the cheap probes (issue 14 item 4): LN-MLP (batch 32) and the tiny ViT, compile off, on
# (inductor) and reduce-overhead (CUDA graphs); the sparsity probe observes inside the compiled graph.
# Then the per-step cost of its statistics against its second graph's compile time, and a summary.
for m in mlp vit; do
  for c in off default reduce-overhead; do
    # reduce-overhead: a step that CUDA graphs cannot capture (a mutated non-static input, a CPU op)
    # fails instead of silently running without graphs
    case $c in off) args=(trainer.compile=false); env=();; default) args=(trainer.compile=true); env=();;
               *) args=(trainer.compile=true trainer.compile_mode=$c); env=(env TORCHINDUCTOR_CUDAGRAPH_OR_ERROR=1);; esac
    TAIL=6 part "compiled_${m}_$c" 110 "${env[@]}" python3 benchmarks/throughput.py --presets cheap --budget-s 8 --rounds 2 \
        --json "$OUT/compiled_${m}_$c.json" model=$m "${args[@]}" $R
  done
done
part compiled_stats_cost_mlp 120 python3 benchmarks/compiled_stats_cost.py --seconds 3 --rounds 2 model=mlp $R
compgen -G "$OUT/compiled_*.json" > /dev/null && python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
print("=== compiled summary: model, compile, trainer steps/s, bare steps/s, MFU (trainer), host syncs")
for path in sorted(Path(sys.argv[1]).glob("compiled_*.json")):
    r = json.loads(path.read_text()); c = r["presets"]["cheap"]; fl = c["flops_per_step"]
    mfu = f"{100 * fl * c['trainer']['steps_per_s'] / r['peak_flops']:.2f}%" if fl and r["peak_flops"] else "n/a"
    print(f"{r['model']:5s} {path.stem.split('_', 2)[2]:16s} {c['trainer']['steps_per_s']:9.1f} "
          f"{c['bare']['steps_per_s']:9.1f} {mfu:>8s}  {c['host_syncs']}")
PY
