"""The ledger: one line per unit outcome, appended to <state dir>/ledger.jsonl."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from trackport.transfer.jsonl import JsonlAppender, read_jsonl

LEDGER_FILE = "ledger.jsonl"


class Ledger:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LEDGER_FILE
        self._appender = JsonlAppender(self.path)

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
                "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            }
        )

    def close(self) -> None:
        self._appender.close()


def read_ledger(state_dir: Path) -> list[dict]:
    return list(read_jsonl(state_dir / LEDGER_FILE))
