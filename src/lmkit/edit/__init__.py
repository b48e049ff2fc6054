"""lmkit.edit — change what a trained model knows: model editing and model merging (merge_*.py)."""
