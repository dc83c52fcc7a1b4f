"""`trackport runs ...`: list, show, tag, rename, delete, restore and compare runs. Each
command lives in a module of its own; importing them here registers them on the group."""
from trackport.cli.runs.group import runs_group
from trackport.cli.runs import compare, edit, listing, show  # noqa: F401 - registers the commands

__all__ = ["runs_group"]
