"""sparsity-exp: experiment runner for activation sparsity in MLP blocks."""

__version__ = "0.1.0"
