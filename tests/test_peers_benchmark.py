"""benchmarks/peers.py on a tiny model with a small budget: the JSON shape, and agreement of the
project with every reference it could run (the peers' parts only where the peer is installed)."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# slow (22 s of a 2-core default suite): the benchmark script's own check; the spectrum's exactness against
# numpy's eigenvalues and SVD stays in the default suite (test_spectrum_gram.py, test_spectral_probes.py)
@pytest.mark.slow
def test_peers_benchmark_json(tmp_path):
    out = tmp_path / "peers.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--samples", "3", "--repeats", "1",
                          "--key-shape", "40x12", "--json", str(out), "--rse-target", "0.2", "--rse-repeats", "2",
                          "--pilot", "10", "--train-steps", "20", "model.width=16", "model.depth=2",
                          "trainer.batch_size=16"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    comparisons = result["comparisons"]
    for c in comparisons:
        assert set(c) == {"name", "peer", "project_s", "peer_s", "ratio", "max_rel_diff"}
        assert c["project_s"] > 0 and c["peer_s"] > 0
        assert math.isclose(c["ratio"], c["project_s"] / c["peer_s"])
    got = {(c["name"], c["peer"]): c["max_rel_diff"] for c in comparisons}
    # the spectrum against routes that need no peer package: the same eigenvalues
    for peer in ("gram_eigvalsh", "svdvals", "authors_eigvals"):
        assert got[("spectrum", peer)] < 1e-6, peer
    if importlib.util.find_spec("pyhessian") is not None:
        assert got[("hessian_trace_3", "pyhessian")] < 1e-4  # the same vectors, so the same per-vector terms
        assert got[("hessian_top_eigenvalue", "pyhessian")] < 2e-2  # Lanczos vs power iteration, both at tol 1e-3
    else:
        assert "pyhessian not installed" in res.stdout and not any(p == "pyhessian" for _, p in got)
    if ("spectrum", "weightwatcher") in got:
        assert got[("spectrum", "weightwatcher")] < 1e-6
    # the trace to a relative standard error: every method at its budget, the project's best against each
    detail = {(d["library"], d["method"]): d for d in result["trace_rse"]}
    assert {("project", m) for m in ("hutchinson", "hutchpp", "xtrace")} <= set(detail)
    best = min((d for d in detail.values() if d["library"] == "project"), key=lambda d: d["seconds"])
    rse = [c for c in comparisons if c["name"] == "trace_to_0.2_rse"]
    assert rse and all(c["project_s"] == best["seconds"] for c in rse)
    for d in detail.values():
        assert d["matvecs"] >= 2 and d["seconds"] > 0 and math.isfinite(d["estimate"])
        if d["library"] == "project":
            assert d["own_rse"] is not None and d["own_rse"] > 0
    if importlib.util.find_spec("curvlinops") is not None:
        assert {("curvlinops", m) for m in ("hutchinson", "hutchpp", "xtrace")} <= set(detail)
        assert detail[("curvlinops", "hutchpp")]["matvecs"] % 3 == 0 and detail[("curvlinops", "xtrace")]["matvecs"] % 2 == 0
    if importlib.util.find_spec("pyhessian") is not None:
        # the same estimator as the project's Hutchinson, so the same budget
        assert detail[("pyhessian", "hutchinson")]["matvecs"] == detail[("project", "hutchinson")]["matvecs"]
