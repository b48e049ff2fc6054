"""Changing what a trained model knows: model editing (ROME, MEMIT, GRACE, FT-L) and model merging (merge_*.py)."""
