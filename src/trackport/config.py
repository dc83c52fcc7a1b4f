"""Process configuration and the one value object for tuning a transfer.

`TransferConfig` holds every knob a transfer has (workers, batch and page sizes, retries,
spool limits). The CLI and the benchmarks build one; stores and the engine take it when
they are opened; tests pass a small one instead of patching module constants. The
defaults are the measured ones (see docs/design-decisions.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TransferConfig:
    workers: int = 4  # units moved at the same time
    metric_batch_rows: int = 65_536  # the most rows in a metric batch a source yields
    # A tracking server's REST API (pages at the server's own limits).
    rest_experiments_page: int = 1000
    rest_runs_page: int = 1000
    rest_history_page: int = 25_000  # what MLflow's own client asks for
    rest_run_ids_per_filter: int = 100
    # Hand the parts of a run filter a store reads as trackport does to the store (a server's
    # search, a database's SQL); off, every run is read and the filter applied here alone.
    search_pushdown: bool = True
    rest_remembered_runs: int = 10_000  # runs whose metric keys a listing remembers for the reads after it
    retries: int = 7  # retries of a transient error (429, 5xx, reset); MLFLOW_HTTP_REQUEST_MAX_RETRIES overrides
    # A local sqlite store: histories up to this many points are sorted in memory, larger
    # ones spooled to disk; the writer reads this many points ahead.
    sqlite_in_memory_points: int = 250_000
    sqlite_ahead_points: int = 50_000
    # A bundle.
    bundle_row_group_rows: int = 128 * 1024
    bundle_checked_runs: int = 256  # checked runs a bundle source keeps for the workers

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool):
                continue  # a switch
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TransferConfig.{name} must be a positive whole number, not {value!r}")


DEFAULT = TransferConfig()


def state_home() -> Path:
    """Where trackport keeps what belongs to no store on disk (the id maps and ledgers of
    transfers into tracking servers): $TRACKPORT_HOME, else ~/.trackport."""
    return Path(os.environ.get("TRACKPORT_HOME") or Path.home() / ".trackport")
