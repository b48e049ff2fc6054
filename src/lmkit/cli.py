"""The `lmkit` command: one sub-command per stage of a model's life.

Each section below belongs to one area; command bodies import lazily so that
`lmkit --help` stays fast and optional extras are needed only by their commands.
"""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lmkit")
def cli() -> None:
    """lmkit: train, fine-tune, serve and evaluate language models."""


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


# ---- section: models and hub ----------------------------------------------------------
# ---- end section: models and hub ------------------------------------------------------

# ---- section: tokenizers ------------------------------------------------------------------
# ---- end section: tokenizers --------------------------------------------------------------

# ---- section: segmentation ------------------------------------------------------------
# ---- end section: segmentation --------------------------------------------------------
