"""The records kept beside a target (id map, ledger, transfer log) belong to the store that
was there when they were written.

The first transfer into a target writes `target.json` with the store's identity (a sqlite
database's own stamp or its Default experiment's creation time, a server's Default
experiment's creation time). Each later transfer compares: a store that was replaced at
the same path or URL (a staging server reset, a database deleted and made again) gets a
fresh set of records, and the old ones are moved aside, not deleted. Nothing in these
records decides what is written: what the target holds (ids, provenance tags) is looked up
in the target itself.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from trackport.errors import storage_error
from trackport.stores.base import StoreDescription
from trackport.transfer.idmap import IDMAP_FILE
from trackport.transfer.ledger import LEDGER_FILE, TRANSFERS_FILE
from trackport.transfer.sync_state import SYNC_FILE

TARGET_FILE = "target.json"
RECORDS = (IDMAP_FILE, LEDGER_FILE, TRANSFERS_FILE, SYNC_FILE, TARGET_FILE)


def claim_records(state_dir: Path, target: StoreDescription) -> str | None:
    """Make the records in state_dir those of `target`; a one-line notice when they were
    another store's (and are now set aside), else None."""
    path = state_dir / TARGET_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        recorded = {}  # unreadable: rewritten below
    before = recorded.get("identity")
    if before and target.identity and before != target.identity:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = state_dir / f"replaced-{stamp}"
        try:
            aside.mkdir()
            for name in RECORDS:
                if (state_dir / name).exists():
                    os.replace(state_dir / name, aside / name)
        except OSError as exc:
            raise (storage_error(exc, str(aside)) or exc) from None
        _write(path, target)
        return (
            f"{target.uri} is not the store the earlier transfers into it wrote (it was replaced or made again):"
            f" their id map and ledger are now in {aside}, and it is treated as a new target"
        )
    if before != target.identity and target.identity:
        _write(path, target)
    return None


def records_belong(state_dir: Path, target: StoreDescription) -> bool:
    """Whether the records in state_dir are the target's (none yet counts as its own), read
    without changing anything (for a dry run)."""
    try:
        recorded = json.loads((state_dir / TARGET_FILE).read_text(encoding="utf-8")).get("identity")
    except (OSError, ValueError, AttributeError):
        return True
    return not (recorded and target.identity and recorded != target.identity)


def _write(path: Path, target: StoreDescription) -> None:
    doc = {
        "identity": target.identity,
        "uri": target.uri,
        "kind": target.kind,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(doc, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise (storage_error(exc, str(path)) or exc) from None
