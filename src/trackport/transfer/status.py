"""What the transfers into one target did, read back from its ledger, transfer log and id
map: each unit's latest outcome, and what the last transfer left still to do."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trackport.errors import BadInputError
from trackport.locking import is_locked
from trackport.transfer.idmap import IDMAP_FILE, kind_order
from trackport.transfer.jsonl import read_jsonl
from trackport.transfer.ledger import LEDGER_FILE, TRANSFERS_FILE
from trackport.transfer.summary import OUTCOMES


@dataclass
class LastTransfer:
    transfer_id: str
    started_at: str
    source: dict
    ended: str | None = None  # "finished" | "stopped" | None (killed, or still running)
    ended_at: str | None = None
    reason: str | None = None  # why it stopped
    running: str | None = None  # who holds the target's lock now
    experiments_planned: int = 0
    experiments_still_to_do: list[str] = field(default_factory=list)  # source ids, in planned order
    units_recorded: int = 0

    def to_json(self) -> dict:
        return dict(vars(self))


@dataclass
class TransferStatus:
    state_dir: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # kind name -> outcome -> units
    failed: list[dict] = field(default_factory=list)  # ledger lines of units whose latest outcome failed
    last_activity: str | None = None
    last_transfer: LastTransfer | None = None

    def to_json(self) -> dict:
        return {
            "state_dir": str(self.state_dir),
            "counts": self.counts,
            "failed": self.failed,
            "last_activity": self.last_activity,
            "last_transfer": self.last_transfer.to_json() if self.last_transfer else None,
        }


def read_status(state_dir: Path) -> TransferStatus:
    """Each unit's latest outcome over every transfer into the target (a run that failed
    once and was done by the next run counts as done), and the last transfer's state."""
    if not (state_dir / LEDGER_FILE).is_file():
        raise BadInputError(f"no transfer into this target is recorded (no {state_dir / LEDGER_FILE})")
    latest: dict[tuple[str, str], dict] = {}
    status = TransferStatus(state_dir)
    last = _last_transfer(state_dir)
    seen_experiments: set[str] = set()
    for line in read_jsonl(state_dir / LEDGER_FILE):
        latest[(line["kind"], line["source_id"])] = line
        status.last_activity = line.get("at")
        if last is not None and line.get("transfer_id") == last.transfer_id:
            last.units_recorded += 1
            if line["kind"] == "experiment":
                seen_experiments.add(line["source_id"])
    for (kind, _), line in sorted(latest.items(), key=lambda item: (kind_order(item[0][0]), item[0][1])):
        outcomes = status.counts.setdefault(kind, dict.fromkeys(OUTCOMES, 0))
        outcomes[line["outcome"]] = outcomes.get(line["outcome"], 0) + 1
        if line["outcome"] == "failed":
            status.failed.append(line)
    if last is not None and last.ended != "finished":
        last.experiments_still_to_do = [e for e in last.experiments_still_to_do if e not in seen_experiments]
        last.running = is_locked(state_dir)
    status.last_transfer = last
    return status


def _last_transfer(state_dir: Path) -> LastTransfer | None:
    last: LastTransfer | None = None
    for event in read_jsonl(state_dir / TRANSFERS_FILE):
        if event.get("event") == "started":
            planned = list(event.get("experiments") or [])
            last = LastTransfer(
                transfer_id=event["transfer_id"],
                started_at=event.get("at", ""),
                source=event.get("source") or {},
                experiments_planned=len(planned),
                experiments_still_to_do=planned,
            )
        elif last is not None and event.get("transfer_id") == last.transfer_id:
            last.ended, last.ended_at, last.reason = event.get("event"), event.get("at"), event.get("reason")
    if last is not None and last.ended == "finished":
        last.experiments_still_to_do = []
    return last


def read_idmap(state_dir: Path) -> list[dict]:
    """Every source id → target id pair recorded for the target, by kind (experiments first)."""
    if not (state_dir / IDMAP_FILE).is_file():
        raise BadInputError(f"no id map for this target (no {state_dir / IDMAP_FILE}); run a transfer into it first")
    latest = {(e["kind"], e["source_id"]): e["target_id"] for e in read_jsonl(state_dir / IDMAP_FILE)}
    return [
        {"kind": kind, "source_id": source_id, "target_id": target_id}
        for (kind, source_id), target_id in sorted(latest.items(), key=lambda item: (kind_order(item[0][0]), item[0][1]))
    ]
