#!/usr/bin/env bash
# GPU checks of the curvature probes (issue 19) in one prepared command (about 5 minutes):
#   bash benchmarks/device_curvature.sh     # logs and JSON under ${OUT:-benchmarks/out}/
# DEVICE=cpu ONLY='^(hessian|online)' bash benchmarks/device_curvature.sh: a dry run of the first two parts on a CPU.
# hessian_cuda: the Hessian probe on CUDA with each trace estimator, batches=2 (two-level SE rows);
# online_posthoc: a probes=full run on CUDA and `sparsity-exp probe RUN checkpoints=last`: the hessian and
# sharpness rows of the last step compared; peers_cuda: benchmarks/peers.py --device cuda.
# Pure-python packages missing on the lent machines (hydra, omegaconf, pyhessian, curvlinops) can travel
# in .pysite/ (copied from a venv's site-packages).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}; mkdir -p "$OUT"
# or as wheels in .whl/ (as benchmarks/device_all.sh takes them)
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=$PWD:$PWD/.pysite:/tmp/site OMP_NUM_THREADS=8 MPLBACKEND=Agg PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}; export DEVICE
part() { local name=$1 limit=$2; shift 2; [[ $name =~ ${ONLY:-.} ]] || return 0; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  tail -n "${TAIL:-14}" "$OUT/$name.log"; echo "=== $name: rc $rc, $((SECONDS - t0)) s"; }
TAIL=20 part hessian_cuda 120 python3 - <<'PY'
import os, sys, time, torch
sys.path.insert(0, "benchmarks")
import peers
from sparsity_exp.probes import build_probes
from sparsity_exp.probes.base import ProbeContext
from sparsity_exp.train import ClassificationTask
dev = torch.device(os.environ["DEVICE"])
model, sites, batch = peers.model_and_batch([], dev)
batches = [batch, tuple(t.flip(0) for t in batch)]
for method in ("hutchinson", "hutchpp", "xtrace"):
    (probe,) = build_probes({"hessian": {"samples": 30, "batches": 2, "trace_estimator": method, "block_samples": 4,
                                         "feature_samples": 4, "iterations": 20}}, sites)
    ctx = ProbeContext(model=model, sites=sites, task=ClassificationTask(), train_batches=batches, device=dev)
    dev.type == "cuda" and torch.cuda.synchronize(); t = time.perf_counter()
    rows = {(m, l): v for _, m, l, v in probe.measure(ctx)}
    dev.type == "cuda" and dev.type == "cuda" and torch.cuda.synchronize(); t = time.perf_counter() - t
    print(method, f"{t:.2f} s", {m: round(rows[(m, "avg")], 4) for m in ("trace", "trace_se", "trace_df", "trace_se_vectors",
          "trace_se_batches", "lambda_max", "feature_input_trace", "feature_input_trace_se")},
          "block_trace_0", round(rows[("block_trace", 0)], 4))
PY
part online_posthoc 180 bash -c 'python3 -m sparsity_exp run probes=full trainer.steps=100 trainer.device=$DEVICE \
  trainer.progress=false hydra.run.dir=/tmp/cf && python3 -m sparsity_exp probe /tmp/cf checkpoints=last && python3 - <<PY
import pandas as pd
on = pd.read_csv("/tmp/cf/metrics.csv", dtype=str); post = pd.read_csv("/tmp/cf/posthoc_metrics.csv", dtype=str)
keys = ["probe", "split", "metric", "layer"]
for probe in ("hessian", "sharpness"):
    a = on[(on.probe == probe) & (on.step == "100")].sort_values(keys)[keys + ["value"]].reset_index(drop=True)
    b = post[(post.probe == probe) & (post.step == "100")].sort_values(keys)[keys + ["value"]].reset_index(drop=True)
    print(probe, len(a), "rows online,", len(b), "post hoc:", "IDENTICAL" if a.equals(b) else "DIFFER")
    if not a.equals(b):
        m = a.merge(b, on=keys, suffixes=("_on", "_post")); print(m[m.value_on != m.value_post].head(20).to_string())
PY'
TAIL=25 part peers_cuda 300 python3 benchmarks/peers.py --device $DEVICE --samples 10,50 --repeats 3 \
  --rse-repeats 3 --json "$OUT/peers_cuda.json"
