"""What the transfers into one target did, read back from its ledger and id map."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trackport.errors import BadInputError
from trackport.transfer.idmap import IDMAP_FILE
from trackport.transfer.jsonl import read_jsonl
from trackport.transfer.ledger import LEDGER_FILE


@dataclass
class TransferStatus:
    state_dir: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> outcome -> units
    failed: list[dict] = field(default_factory=list)  # ledger lines of units whose latest outcome failed
    last_activity: str | None = None

    def to_json(self) -> dict:
        return {
            "state_dir": str(self.state_dir),
            "counts": self.counts,
            "failed": self.failed,
            "last_activity": self.last_activity,
        }


def read_status(state_dir: Path) -> TransferStatus:
    """Each unit's latest outcome over every transfer into the target (a run that failed
    once and was done by the next run counts as done)."""
    if not (state_dir / LEDGER_FILE).is_file():
        raise BadInputError(f"no transfer into this target is recorded (no {state_dir / LEDGER_FILE})")
    latest: dict[tuple[str, str], dict] = {}
    status = TransferStatus(state_dir)
    for line in read_jsonl(state_dir / LEDGER_FILE):
        latest[(line["kind"], line["source_id"])] = line
        status.last_activity = line.get("at")
    for (kind, _), line in sorted(latest.items()):
        outcomes = status.counts.setdefault(kind, {"done": 0, "skipped": 0, "failed": 0})
        outcomes[line["outcome"]] += 1
        if line["outcome"] == "failed":
            status.failed.append(line)
    return status


def read_idmap(state_dir: Path) -> list[dict]:
    """Every source id → target id pair recorded for the target, experiments first."""
    if not (state_dir / IDMAP_FILE).is_file():
        raise BadInputError(f"no id map for this target (no {state_dir / IDMAP_FILE}); run a transfer into it first")
    latest = {(e["kind"], e["source_id"]): e["target_id"] for e in read_jsonl(state_dir / IDMAP_FILE)}
    return [
        {"kind": kind, "source_id": source_id, "target_id": target_id}
        for (kind, source_id), target_id in sorted(latest.items())
    ]
