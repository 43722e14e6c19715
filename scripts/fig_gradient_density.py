"""E[g^2|a>0]/E[g^2] vs step (log y) and log10|g| histograms (arrays/gradient_density_step*.npz).
docs/paper.md §1.2, §2 claim 9.

`python scripts/fig_gradient_density.py PATH... [--out DIR]`,
PATH being run folders (collected now) or a table written by `sparsity-exp collect`."""
import sys

from sparsity_exp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("gradient_density"))
