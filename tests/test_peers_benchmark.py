"""benchmarks/peers.py on a tiny model with a small budget: the JSON shape, and agreement of the
project with every reference it could run (the peers' parts only where the peer is installed)."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_peers_benchmark_json(tmp_path):
    out = tmp_path / "peers.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--samples", "3", "--repeats", "1",
                          "--key-shape", "40x12", "--json", str(out), "model.width=16", "model.depth=2",
                          "trainer.batch_size=16"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    comparisons = json.loads(out.read_text())["comparisons"]
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
