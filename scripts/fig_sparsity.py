"""Per-layer activation sparsity vs step, training batches and test set, one curve per run group
(vanilla vs modified: whatever config key varies). docs/paper.md §2 claim 7.

`python scripts/fig_sparsity.py PATH... [--out DIR]`,
PATH being run folders (collected now) or a table written by `sparsity-exp collect`."""
import sys

from sparsity_exp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("sparsity"))
