#!/usr/bin/env bash
# Run the CPU twin of every paper preset (conf/experiment/paper/*_cpu.yaml), then make every figure of
# each into results/gallery/<preset>/ (PNG and PDF, plus the collected table). Prints the wall time of
# each twin and of all of them together. Usage, from the repository root:
#   scripts/run_cpu_twins.sh                       # runs into results/twins/, gallery into results/gallery/
#   PYTHON=.venv/bin/python TWINS=/tmp/twins GALLERY=/tmp/gallery scripts/run_cpu_twins.sh
#   ONLY="shifted mlp_rmt" scripts/run_cpu_twins.sh    # a subset (finetune twins need their from-scratch twin)
# It refuses to write into an existing TWINS folder (nothing already written is lost).
set -euo pipefail
PYTHON=${PYTHON:-python}
TWINS=${TWINS:-results/twins}
GALLERY=${GALLERY:-results/gallery}
ONLY=${ONLY:-"shifted cifar_ablation vit_imagenet vit_imagenet_finetune t5_c4 t5_c4_finetune mlp_rmt augmented_flatness"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MPLBACKEND=Agg
if [ -e "$TWINS" ] && [ -n "$(ls -A "$TWINS" 2>/dev/null)" ]; then
  echo "error: $TWINS already holds runs; move it away or set TWINS=<new folder>" >&2; exit 2
fi
mkdir -p "$TWINS" "$GALLERY"
sx() { "$PYTHON" -m sparsity_exp "$@"; }
vanilla_of() {  # the modules=none job (job 0) of a from-scratch twin sweep
  local dir; dir=$(ls -d "$TWINS/$1"/0_* 2>/dev/null | head -1)
  [ -n "$dir" ] || { echo "error: no vanilla run under $TWINS/$1; run the $1 twin first" >&2; exit 2; }
  echo "$dir"
}
twin() {  # name -> run the twin's commands into $TWINS/name
  local name=$1 out=$TWINS/$1
  case $name in
    vit_imagenet_finetune) sx run -m experiment=paper/${name}_cpu "protocol.init='$(vanilla_of vit_imagenet)'" hydra.sweep.dir="$out" ;;
    t5_c4_finetune) sx run -m experiment=paper/${name}_cpu "protocol.init='$(vanilla_of t5_c4)'" hydra.sweep.dir="$out" ;;
    augmented_flatness)
      sx run experiment=paper/${name}_cpu hydra.run.dir="$out/run"
      sx probe "$out/run" probes=checkpoints checkpoints=all probes.augmented_flatness.batches=4 ;;
    *) sx run -m experiment=paper/${name}_cpu hydra.sweep.dir="$out" ;;
  esac
}
declare -A WALL
start_all=$(date +%s)
for name in $ONLY; do
  t0=$(date +%s)
  twin "$name" > "$TWINS/$name.log" 2>&1 || { echo "twin $name failed, see $TWINS/$name.log" >&2; tail -20 "$TWINS/$name.log" >&2; exit 1; }
  WALL[$name]=$(( $(date +%s) - t0 ))
  echo "twin $name: ${WALL[$name]} s"
done
total=$(( $(date +%s) - start_all ))
for name in $ONLY; do
  sx figures "$TWINS/$name" --out "$GALLERY/$name" > "$GALLERY/$name.log" 2>&1 || { echo "figures $name failed, see $GALLERY/$name.log" >&2; exit 1; }
  echo "gallery $name: $(ls "$GALLERY/$name"/*.png 2>/dev/null | wc -l) figure(s) in $GALLERY/$name"
done
echo "all CPU twins: $total s (figures: $(( $(date +%s) - start_all - total )) s more)"
