"""Data parallel training: two gloo ranks under torchrun log what one process logs on the same
global batches; rank shards of the batches partition them exactly."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from sparsity_exp.batches import make_batches
from sparsity_exp.run import execute

from .conftest import ROOT

KEY = ["step", "split", "probe", "metric", "layer"]


def test_two_ranks_log_the_single_process_values(compose, tiny, tmp_path):
    overrides = [*tiny, "trainer.batch_size=32", "trainer.eval_batch_size=100"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "sparsity_exp", "run", *overrides], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    folders = list((tmp_path / "results").iterdir())
    assert len(folders) == 1, folders  # one run folder for both ranks, written by rank 0 alone
    two = pd.read_csv(folders[0] / "metrics.csv")
    assert not two.duplicated(KEY).any()
    assert json.loads((folders[0] / "summary.json").read_text())["status"] == "completed"

    execute(compose(*overrides), tmp_path / "single")
    one = pd.read_csv(tmp_path / "single" / "metrics.csv")
    both = one.merge(two, on=KEY, suffixes=("_1", "_2"))
    assert len(both) == len(one) == len(two)
    sparsity = both[both.probe == "sparsity"]
    assert set(sparsity.split) == {"train", "test"} and {"0", "1"} <= set(sparsity.layer.astype(str))
    # counts over the same entries: equal (the ranks' DDP-averaged gradients equal the full-batch
    # gradient up to float summation order, which flips no activation in 30 steps of this run)
    assert (sparsity.value_1 == sparsity.value_2).all(), sparsity[sparsity.value_1 != sparsity.value_2]
    rest = both[both.probe != "sparsity"]
    close = np.isclose(rest.value_1, rest.value_2, rtol=1e-5, atol=1e-6)
    assert close.all(), rest[~close].groupby(["probe", "metric"]).size()


def test_device_batches_split_each_global_batch_between_ranks():
    ds = TensorDataset(torch.arange(50), torch.arange(50) * 10)
    kw = dict(batch_size=8, shuffle=True, drop_last=True, seed=3, device=torch.device("cpu"))
    single = [b[0] for b in make_batches(ds, **kw)]
    shards = [[b[0] for b in make_batches(ds, **kw, rank=r, world_size=2)] for r in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1]) == 6
    for whole, first, second in zip(single, *shards):
        assert torch.equal(torch.cat([first, second]), whole)  # rank 0 the first half, rank 1 the rest


def test_evaluation_shards_cover_the_test_set_once():
    ds = TensorDataset(torch.arange(11))
    seen = [int(x) for r in range(3) for (b,) in make_batches(ds, 4, shuffle=False, drop_last=False, seed=0,
                                                             device=torch.device("cpu"), rank=r, world_size=3)
            for x in b]
    assert sorted(seen) == list(range(11))


class ListDataset(Dataset):  # an on-disk-like dataset (not a TensorDataset): goes through DataLoader
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(i), torch.tensor(i % 2)


def test_loader_shards_are_disjoint_and_reshuffle_each_epoch():
    kw = dict(batch_size=6, shuffle=True, drop_last=True, seed=1, device=torch.device("cpu"))
    loaders = [make_batches(ListDataset(40), **kw, rank=r, world_size=2) for r in range(2)]
    epoch1 = [torch.cat([b[0] for b in loader]) for loader in loaders]
    assert all(len(b[0]) == 3 for b in loaders[0])  # per-rank share of the global batch
    assert len(loaders[0]) == 40 // 6 and not set(epoch1[0].tolist()) & set(epoch1[1].tolist())
    epoch2 = torch.cat([b[0] for b in loaders[0]])
    assert not torch.equal(epoch1[0], epoch2)
