# Device check of the transformer presets on a GPU machine (run from the repository root after merging):
# tiny ViT/T5 with bf16 and gradient accumulation, ViT-B/16 and T5-Base for 30 steps on data written in
# the real formats, then benchmarks/transformers_steps.py on the GPU. Where hydra-core/omegaconf are
# missing, carry their wheels in .whl/ (and the antlr4 package in .whl/site/).
set -e
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/.whl/site:$PWD OMP_NUM_THREADS=4 MPLBACKEND=Agg PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, torchvision; print(torch.__version__, transformers.__version__, torchvision.__version__, torch.cuda.get_device_name())"
R="trainer.progress=false results_dir=/tmp/r"
echo "== tiny vit, bf16, grad_accum 2"; python3 -m sparsity_exp run model=vit trainer.steps=200 trainer.precision=bf16 trainer.grad_accum=2 $R | tail -3
echo "== tiny t5, bf16"; python3 -m sparsity_exp run model=t5 trainer.steps=200 trainer.precision=bf16 $R | tail -3
python3 - <<'PY'
from pathlib import Path
from tests.test_vision_data import write_cifar
from tests.test_text_data import _write_c4_shard
write_cifar(Path("/tmp/c"), per_batch=128)
docs = [("Paper scale check document %d. " % i) * 40 for i in range(3000)]
_write_c4_shard(Path("/tmp/c4/c4-train.00000-of-01024.json.gz"), docs[:2800])
_write_c4_shard(Path("/tmp/c4/c4-validation.00000-of-00008.json.gz"), docs[2800:])
PY
echo "== vit_b16 on CIFAR-format batches at 224, bf16"; python3 -m sparsity_exp run model=vit_b16 data.root=/tmp/c data.verify=false trainer.steps=30 trainer.batch_size=64 trainer.eval_every=30 trainer.log_every=10 trainer.precision=bf16 trainer.num_workers=4 $R | tail -3
echo "== t5_base on C4-format shards, inputs 512, bf16"; python3 -m sparsity_exp run model=t5_base data.root=/tmp/c4 trainer.steps=30 trainer.batch_size=32 trainer.eval_every=30 trainer.log_every=10 trainer.precision=bf16 trainer.eval_batch_size=64 data.max_test_examples=128 $R | tail -3
echo "== benchmark (GPU)"; python3 benchmarks/transformers_steps.py --steps 100
