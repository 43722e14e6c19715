"""Fraction of pre-activations in the flat (zero-derivative) region vs step, one panel per (s_x, s_y)
of the shifted activations. docs/paper.md §4.1, §2 claims 1 and 8.

`python scripts/fig_flat_region.py PATH... [--out DIR]`,
PATH being run folders (collected now) or a table written by `sparsity-exp collect`."""
import sys

from sparsity_exp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("flat_region"))
