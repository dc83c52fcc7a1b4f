"""Counts of what a transfer did: done / skipped / failed / not selected, per kind of thing
moved. Every experiment and run the source holds under the selection is in exactly one
of the four (points and bytes are counted for what was read: done or failed)."""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

OUTCOMES = ("done", "skipped", "failed", "not_selected")
MEASURES = ("experiments", "runs", "metric_points", "artifact_files", "artifact_bytes")
MEASURE_OF_KIND = {"experiment": "experiments", "run": "runs"}


@dataclass
class Failure:
    kind: str  # "experiment" | "run"
    source_id: str
    name: str
    reason: str


@dataclass
class Summary:
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {m: dict.fromkeys(OUTCOMES, 0) for m in MEASURES}
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, measure: str, outcome: str, amount: int = 1) -> None:
        with self._lock:
            self.counts[measure][outcome] += amount

    def fail(self, failure: Failure) -> None:
        with self._lock:
            self.failures.append(failure)
            self.counts[MEASURE_OF_KIND[failure.kind]]["failed"] += 1

    def leave_out(self, kind: str, reason: str) -> None:
        with self._lock:
            self.not_selected[(kind, reason)] += 1
            self.counts[MEASURE_OF_KIND[kind]]["not_selected"] += 1

    def lost(self, description: str) -> None:
        with self._lock:
            self.losses.append(description)

    def no_artifact_folder(self, folder: str) -> None:
        with self._lock:
            self.missing_artifact_folders += 1
            self.first_missing_artifact_folder = self.first_missing_artifact_folder or folder

    @property
    def failed(self) -> int:
        return sum(c["failed"] for c in self.counts.values())

    def all_notices(self) -> list[str]:
        notices = list(self.notices)
        if self.missing_artifact_folders:
            n = self.missing_artifact_folders
            notices.append(
                f"{n} run{'s' if n != 1 else ''} had no artifact folder in the source"
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
        }
