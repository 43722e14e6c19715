"""Relative anisotropy vs hidden width and the Marchenko-Pastur bound vs step (LN-MLP width sweep).
docs/paper.md §1.6, §4.5, §2 claim 5.

`python scripts/fig_rmt.py PATH... [--out DIR]`,
PATH being run folders (collected now) or a table written by `sparsity-exp collect`."""
import sys

from sparsity_exp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("rmt"))
