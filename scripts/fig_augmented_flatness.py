"""AS_K, L0 coefficient, AS_V, L2 coefficient and AS_K/coef_L0 vs step (log y).
docs/paper.md §1.3, §2 claim 2.

`python scripts/fig_augmented_flatness.py PATH... [--out DIR]`,
PATH being run folders (collected now) or a table written by `sparsity-exp collect`."""
import sys

from sparsity_exp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("augmented_flatness"))
