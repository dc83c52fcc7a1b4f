"""Counts of what a transfer did: done / skipped / failed / not selected, per kind of unit
(keyed by the kind's plural: "experiments", "runs", "notes") and for the amounts moved
(metric points, artifact files and bytes). Every unit the source holds under the
selection is in exactly one of the four."""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from trackport.kinds import kind as _kind

OUTCOMES = ("done", "skipped", "failed", "not_selected")
AMOUNTS = ("metric_points", "artifact_files", "artifact_bytes")


@dataclass
class Failure:
    kind: str  # a unit kind's name: "experiment", "run", ...
    source_id: str
    name: str
    reason: str


@dataclass
class Summary:
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {m: dict.fromkeys(OUTCOMES, 0) for m in ("experiments", "runs", *AMOUNTS)}
    )
    failures: list[Failure] = field(default_factory=list)
    # (kind, reason) -> how many units were left out for it; each one is in the ledger.
    not_selected: Counter = field(default_factory=Counter)
    losses: list[str] = field(default_factory=list)
    planned_losses: list[str] = field(default_factory=list)  # declared before writing
    notices: list[str] = field(default_factory=list)  # what the user should know, one line each
    elapsed_seconds: float = 0.0  # the transfer itself, after both stores were opened
    # Runs whose artifact folder the source did not find: how many, and the first one.
    missing_artifact_folders: int = 0
    first_missing_artifact_folder: str | None = None
    # A sync's runs: new, updated (in place), unchanged, conflicts, gone (from the source).
    sync: dict[str, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def track(self, kind: str) -> None:
        """Show the kind's counts (zeros too) from now on, units before amounts."""
        measure = _kind(kind).plural
        with self._lock:
            if measure not in self.counts:
                amounts = {m: self.counts.pop(m) for m in AMOUNTS}
                self.counts[measure] = dict.fromkeys(OUTCOMES, 0)
                self.counts.update(amounts)

    def add(self, measure: str, outcome: str, amount: int = 1) -> None:
        with self._lock:
            self.counts.setdefault(measure, dict.fromkeys(OUTCOMES, 0))[outcome] += amount

    def unit(self, kind: str, outcome: str) -> None:
        """One unit of the kind ended with the outcome."""
        self.track(kind)
        self.add(_kind(kind).plural, outcome)

    def fail(self, failure: Failure) -> None:
        self.unit(failure.kind, "failed")
        with self._lock:
            self.failures.append(failure)

    def leave_out(self, kind: str, reason: str) -> None:
        self.unit(kind, "not_selected")
        with self._lock:
            self.not_selected[(kind, reason)] += 1

    def lost(self, description: str) -> None:
        with self._lock:
            self.losses.append(description)

    def no_artifact_folder(self, folder: str) -> None:
        with self._lock:
            self.missing_artifact_folders += 1
            self.first_missing_artifact_folder = self.first_missing_artifact_folder or folder

    @property
    def failed(self) -> int:
        return sum(c["failed"] for m, c in self.counts.items() if m not in AMOUNTS)

    def all_notices(self) -> list[str]:
        notices = list(self.notices)
        if self.missing_artifact_folders:
            n = self.missing_artifact_folders
            notices.append(
                f"{_kind('run').count(n)} had no artifact folder in the source"
                f" (the first: {self.first_missing_artifact_folder}); MLflow reads that as no artifacts."
                " If they logged some, the source names the wrong place (for a server's database:"
                " ?artifacts_destination=<its --artifacts-destination>)"
            )
        return notices

    def to_json(self) -> dict:
        return {
            "counts": self.counts,
            "failures": [vars(f) for f in self.failures],
            "not_selected": [
                {"kind": kind, "reason": reason, "units": n} for (kind, reason), n in sorted(self.not_selected.items())
            ],
            "losses": list(self.losses),
            "planned_losses": list(self.planned_losses),
            "notices": self.all_notices(),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            **({"sync": dict(self.sync)} if self.sync is not None else {}),
        }
