"""lmkit.quant — see ../../docs and DESIGN.md; filled by its issue."""
