"""`python -m lmkit` runs the CLI module as a script (nothing imports the CLI)."""

import runpy

runpy.run_module("lmkit.cli", run_name="__main__", alter_sys=True)
