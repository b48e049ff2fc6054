"""lmkit: a complete large-language-model stack in PyTorch, built from first principles."""

__version__ = "0.1.0"
