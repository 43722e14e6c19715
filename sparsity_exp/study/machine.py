"""The machine a study's numbers come from, and a mode that makes CPU numbers reproducible across machines
(``sparsity-exp study SUITE --reproducible``).

**Fingerprint** (``fingerprint()``): torch's version, the ATen CPU capability in use
(``torch.backends.cpu.get_cpu_capability()``: which vectorised kernels run, AVX2 / AVX512 / DEFAULT),
the BLAS and LAPACK torch was built with (``torch.__config__.show()``: BLAS_INFO, MKL's and oneDNN's
versions), intra-op threads, the device, the CPU model, numpy's and Python's versions and the
environment variables that change kernels. The study's own process imports torch before it knows the
mode, so the fingerprint of the runs is taken in a child process started with the runs' environment
(``python -m sparsity_exp.study.machine``), as the runs themselves are (study/launch.py).

**Reproducible mode** (``REPRODUCIBLE_ENV``, applied to the runs' processes, which start after it is
set): ATen's dispatch pinned to its portable kernels (``ATEN_CPU_CAPABILITY=default``: read once when
torch is imported, hence the child process; no AVX2/AVX512 code paths, whose reductions sum in another
order), MKL's conditional numerical reproducibility at its most portable setting (``MKL_CBWR=COMPATIBLE``),
oneDNN's instruction set capped (``ONEDNN_MAX_CPU_ISA=SSE41``) and oneDNN switched off in the runs
(``torch.backends.mkldnn.enabled = False``), one intra-op thread (``OMP_NUM_THREADS=1``,
``MKL_NUM_THREADS=1``: a reduction split over threads sums in another order), and
``torch.use_deterministic_algorithms(True)`` (with cuBLAS's workspace setting, for CUDA runs). What
torch does not promise: identical numbers across torch versions, BLAS builds or CPU architectures
(x86 vs ARM); the fingerprint says which of these a study's runs had. Its speed cost is measured by
``benchmarks/reproducible_cost.py`` (README, "Reproducible numbers").
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

REPRODUCIBLE_FLAG = "SPARSITY_EXP_REPRODUCIBLE"
REPRODUCIBLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "DNNL_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    REPRODUCIBLE_FLAG: "1",
}
ENV_KEYS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG", REPRODUCIBLE_FLAG)
# what must agree for two machines' numbers to be comparable (the rest is shown, not compared)
COMPARED = ("torch", "cpu_capability", "blas", "mkl", "onednn", "threads", "device", "deterministic", "machine")


def mode_env(reproducible: bool) -> dict:
    """The environment of the runs' processes: this one's, plus REPRODUCIBLE_ENV in reproducible mode
    (and without a leftover reproducible flag otherwise)."""
    env = dict(os.environ)
    if reproducible:
        env.update(REPRODUCIBLE_ENV)
    else:
        env.pop(REPRODUCIBLE_FLAG, None)
    return env


def apply_reproducible() -> bool:
    """In a run's process: the torch settings of reproducible mode when the study asked for it (the
    environment variables are already read by then). Returns whether the mode is on."""
    if os.environ.get(REPRODUCIBLE_FLAG) != "1":
        return False
    import torch

    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)
    return True


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(device: str = "cpu") -> dict:
    """This process's fingerprint (see the module docstring)."""
    import numpy as np
    import torch

    config = torch.__config__.show()

    def find(pattern: str) -> str:
        m = re.search(pattern, config)
        return m.group(1).strip() if m else "n/a"

    out = {
        "torch": torch.__version__,
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "blas": find(r"BLAS_INFO=([^,\s]+)"),
        "lapack": find(r"LAPACK_INFO=([^,\s]+)"),
        "mkl": find(r"Math Kernel Library Version ([^\n]+?) for") if torch.backends.mkl.is_available() else "none",
        "onednn": (find(r"MKL-DNN (v[\d.]+)") if torch.backends.mkldnn.is_available() else "none")
        + ("" if torch.backends.mkldnn.enabled else " (disabled)"),
        "threads": torch.get_num_threads(),
        "device": device,
        "gpu": (torch.cuda.get_device_name(0) if str(device).startswith("cuda") and torch.cuda.is_available()
                else "none"),
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }
    return out


def runs_fingerprint(reproducible: bool, device: str = "cpu") -> dict:
    """The fingerprint a run of the study gets. In the default mode the runs' environment is this
    process's, so it is this process's fingerprint; in reproducible mode it is taken in a child process
    with the runs' environment (ATEN_CPU_CAPABILITY is read when torch is imported, so this process,
    which imported torch already, cannot show it)."""
    if not reproducible and os.environ.get(REPRODUCIBLE_FLAG) != "1":
        return fingerprint(device)
    code = [sys.executable, "-m", "sparsity_exp.study.machine", "--device", device]
    tree = str(Path(__file__).resolve().parents[2])
    env = mode_env(reproducible)
    env["PYTHONPATH"] = tree + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run(code, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def differences(a: dict, b: dict) -> list[str]:
    """'key: A -> B' for the compared keys where two fingerprints differ."""
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in COMPARED if a.get(k) != b.get(k)]


def describe(fp: dict) -> str:
    if "error" in fp:
        return f"fingerprint not taken ({fp['error']})"
    env = ", ".join(f"{k}={v}" for k, v in fp.get("env", {}).items()) or "none set"
    return (f"torch {fp['torch']}, CPU capability {fp['cpu_capability']}, BLAS {fp['blas']} (MKL {fp['mkl']}, "
            f"oneDNN {fp['onednn']}), {fp['threads']} thread(s), device {fp['device']}"
            + (f" ({fp['gpu']})" if fp.get("gpu", "none") != "none" else "")
            + f", deterministic algorithms {'on' if fp['deterministic'] else 'off'}; {fp['cpu']} ({fp['machine']}), "
              f"Python {fp['python']}, numpy {fp['numpy']}; environment: {env}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="print this process's machine fingerprint as JSON")
    parser.add_argument("--device", default="cpu")
    apply_reproducible()
    print(json.dumps(fingerprint(parser.parse_args().device)))
