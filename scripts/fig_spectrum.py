"""KK^T eigenvalue histograms per layer (from arrays/spectrum_step*.npz), the 80%-interval ratio
and the near-zero rate vs step. docs/paper.md §1.5, §2 claim 4.

`python scripts/fig_spectrum.py PATH... [--out DIR]`,
PATH being run folders (collected now) or a table written by `sparsity-exp collect`."""
import sys

from sparsity_exp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("spectrum"))
