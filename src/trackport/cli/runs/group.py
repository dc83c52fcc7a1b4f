"""The `trackport runs` command group, which the command modules beside it add to."""
from __future__ import annotations

import click


@click.group("runs")
def runs_group() -> None:
    """List, show, tag, rename, delete, restore and compare runs of a store."""
