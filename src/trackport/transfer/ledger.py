"""The ledger: one line per unit outcome (`ledger.jsonl`), and one line per transfer that
starts or ends (`transfers.jsonl`), both appended in the target's state directory.

Every line of a unit names the transfer it belongs to, so `status` can tell what the
last transfer planned, what it did and what it left still to do when it did not finish.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

from trackport.transfer.jsonl import JsonlAppender

LEDGER_FILE = "ledger.jsonl"
TRANSFERS_FILE = "transfers.jsonl"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Ledger:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LEDGER_FILE
        self.transfer_id = uuid.uuid4().hex
        self._appender = JsonlAppender(self.path)
        self._events = JsonlAppender(state_dir / TRANSFERS_FILE)

    def record(
        self,
        kind: str,
        source_id: str,
        name: str,
        outcome: str,
        reason: str | None = None,
        metric_points: int = 0,
        artifact_files: int = 0,
        artifact_bytes: int = 0,
        losses: list[str] | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self._appender.append(
            {
                "kind": kind,
                "source_id": source_id,
                "name": name,
                "outcome": outcome,
                "reason": reason,
                "metric_points": metric_points,
                "artifact_files": artifact_files,
                "artifact_bytes": artifact_bytes,
                "losses": losses or [],
                **({"notes": notes} if notes else {}),
                "transfer_id": self.transfer_id,
                "at": _now(),
            }
        )

    def started(self, source: dict, selection: dict, planned_experiments: list[str]) -> None:
        """What the transfer is about to do: the experiments it will go through, in order."""
        self._events.append(
            {
                "event": "started",
                "transfer_id": self.transfer_id,
                "source": source,
                "selection": selection,
                "experiments": planned_experiments,
                "at": _now(),
            }
        )

    def ended(self, event: str, counts: dict, reason: str | None = None) -> None:
        """event: "finished" (every planned unit has its line) or "stopped" (a fatal error)."""
        self._events.append(
            {"event": event, "transfer_id": self.transfer_id, "counts": counts, "reason": reason, "at": _now()}
        )

    def close(self) -> None:
        self._appender.close()
        self._events.close()
