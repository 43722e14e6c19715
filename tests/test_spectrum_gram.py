"""Key spectra from the smaller Gram matrix against numpy's SVD: tall, wide and rank-deficient
keys, the larger side's zeros exact, descending order."""
import numpy as np
import pytest
import torch

from sparsity_exp.probes.spectrum import key_eigenvalues


@pytest.mark.parametrize("shape,rank", [((60, 20), 20), ((20, 60), 20), ((48, 16), 5), ((16, 16), 16)])
def test_key_eigenvalues_match_numpy_svd(shape, rank):
    g = torch.Generator().manual_seed(sum(shape) + rank)
    w = (torch.randn(shape[0], rank, generator=g) @ torch.randn(rank, shape[1], generator=g)).float()
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    want = np.zeros(shape[0])
    want[: len(s)] = s**2
    got = key_eigenvalues(w)
    assert got.dtype == np.float64 and got.shape == (shape[0],)
    assert (np.diff(got) <= 0).all() and (got >= 0).all()
    np.testing.assert_allclose(got[:rank], want[:rank], rtol=1e-6)
    # W W^T's d_ff - min(d_ff, d) padding is exactly zero; a rank deficit inside the Gram only rounds to zero
    assert (got[min(shape):] == 0).all()
    assert np.abs(got[rank:]).max(initial=0) <= 1e-10 * got[0]
