"""Hessian trace (+-1 SE bars), extreme eigenvalues, hidden-feature traces and sharpness against
activation sparsity, one point per run and step.

`python scripts/fig_flatness_vs_sparsity.py PATH... [--out DIR]`,
PATH being run folders (collected now) or a table written by `sparsity-exp collect`."""
import sys

from sparsity_exp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("flatness_vs_sparsity"))
