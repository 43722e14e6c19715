"""The measurement batch set (probes/measurement.py): a seeded selection of the training set, the
same through either kind of loader, recorded in the run folder and read back, the same at every
step, and leaving the training loader and the global RNG streams as they were."""
import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from sparsity_exp.batches import make_batches
from sparsity_exp.errors import ConfigError
from sparsity_exp.probes.base import ProbeContext
from sparsity_exp.probes.measurement import MEASUREMENT_FILE, measurement, select_indices


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.arange(n)


class _OnDisk(Dataset):
    """A map-style dataset (what a DataLoader serves), samples by index."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _ctx(loader, run_dir=None, seed=3, step=0):
    return ProbeContext(model=torch.nn.Linear(3, 2), train_batches=loader, seed=seed, step=step,
                        recorder=None if run_dir is None else SimpleNamespace(run_dir=run_dir))


def test_selection_is_seeded_and_extends():
    a = select_indices(3, 40, 8, 2)
    assert a == select_indices(3, 40, 8, 2) and a != select_indices(4, 40, 8, 2)
    assert select_indices(3, 40, 8, 4)[:2] == a  # more batches extend fewer
    flat = sum(select_indices(3, 40, 8, 5), [])
    assert sorted(flat) == list(range(40))  # distinct samples
    with pytest.raises(ConfigError, match="batches"):
        select_indices(3, 40, 8, 6)


def test_both_loaders_give_the_recorded_samples(tmp_path):
    x, y = _data()
    tensor_loader = make_batches(TensorDataset(x, y), 8, True, True, 0, torch.device("cpu"))
    data_loader = make_batches(_OnDisk(x, y), 8, True, True, 0, torch.device("cpu"))
    assert type(tensor_loader).__name__ == "DeviceTensorBatches" and type(data_loader).__name__ == "DataLoader"
    with measurement(_ctx(tensor_loader, tmp_path), 2) as a:
        pass
    recorded = json.loads((tmp_path / MEASUREMENT_FILE).read_text())
    assert recorded == {"seed": 3, "examples": 40, "batch_size": 8, "batches": select_indices(3, 40, 8, 2)}
    with measurement(_ctx(data_loader, step=100), 2) as b:
        pass
    for (xa, ya), (xb, yb), idx in zip(a, b, recorded["batches"]):
        assert ya.tolist() == yb.tolist() == idx  # labels are the indices here
        assert torch.equal(xa, xb)
    # read back from the folder: a record there wins over the seed (post hoc measures what the run did)
    recorded["batches"][0] = list(range(8))
    (tmp_path / MEASUREMENT_FILE).write_text(json.dumps(recorded))
    with measurement(_ctx(tensor_loader, tmp_path, step=7), 1) as c:
        assert c[0][1].tolist() == list(range(8))


def test_training_state_is_untouched():
    x, y = _data()
    loader = make_batches(TensorDataset(x, y), 8, True, True, 0, torch.device("cpu"))
    state, ctx = loader.generator.get_state(), _ctx(loader)
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    want = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    with measurement(ctx, 2):
        torch.rand(5), random.random(), np.random.rand()  # draws inside (augmentation, MixUp) are the fixed stream's
    assert torch.equal(torch.rand(3), want[0]) and random.random() == want[1] and np.random.rand() == want[2]
    assert torch.equal(loader.generator.get_state(), state)


def test_a_plain_list_of_batches_is_its_own_measurement_set():
    batches = [(torch.ones(2, 3), torch.zeros(2, dtype=torch.long))] * 3
    with measurement(_ctx(batches), 2) as got:
        assert len(got) == 2 and torch.equal(got[0][0], batches[0][0])
