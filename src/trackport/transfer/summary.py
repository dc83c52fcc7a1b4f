"""Counts of what a transfer did: done / skipped / failed, per kind of thing moved."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

OUTCOMES = ("done", "skipped", "failed")
MEASURES = ("experiments", "runs", "metric_points", "artifact_files", "artifact_bytes")


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
    losses: list[str] = field(default_factory=list)
    planned_losses: list[str] = field(default_factory=list)  # declared before writing
    elapsed_seconds: float = 0.0  # the transfer itself, after both stores were opened
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, measure: str, outcome: str, amount: int = 1) -> None:
        with self._lock:
            self.counts[measure][outcome] += amount

    def fail(self, failure: Failure) -> None:
        with self._lock:
            self.failures.append(failure)
            self.counts[f"{failure.kind}s"]["failed"] += 1

    def lost(self, description: str) -> None:
        with self._lock:
            self.losses.append(description)

    @property
    def failed(self) -> int:
        return sum(c["failed"] for c in self.counts.values())

    def to_json(self) -> dict:
        return {
            "counts": self.counts,
            "failures": [vars(f) for f in self.failures],
            "losses": list(self.losses),
            "planned_losses": list(self.planned_losses),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }
