"""The JSON Schemas of bundle documents (shipped in trackport/schemas/), and validation.

Validators are built once per schema and cached; they are safe to share between threads.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

BUNDLE = "bundle"
EXPERIMENT = "experiment"
RUN = "run"
MANIFEST_ENTRY = "manifest-entry"
IDMAP_ENTRY = "idmap-entry"
LEDGER_ENTRY = "ledger-entry"
TRANSFER_EVENT = "transfer-event"
NAMES = (BUNDLE, EXPERIMENT, RUN, MANIFEST_ENTRY, IDMAP_ENTRY, LEDGER_ENTRY, TRANSFER_EVENT)

_lock = threading.Lock()
_validators: dict[str, Draft202012Validator] = {}


def schema_path(name: str) -> Path:
    if name not in NAMES:
        raise KeyError(f"unknown bundle schema {name!r}")
    return SCHEMA_DIR / f"{name}.schema.json"


def load_schema(name: str) -> dict:
    with open(schema_path(name), encoding="utf-8") as f:
        return json.load(f)


def validator(name: str) -> Draft202012Validator:
    with _lock:
        v = _validators.get(name)
        if v is None:
            schema = load_schema(name)
            Draft202012Validator.check_schema(schema)
            v = _validators[name] = Draft202012Validator(schema)
        return v


def errors(name: str, doc: Any) -> list[str]:
    """Every way doc breaks the schema, as short one-line messages ([] when valid)."""
    out = []
    for err in sorted(validator(name).iter_errors(doc), key=lambda e: list(map(str, e.path))):
        where = "/".join(str(p) for p in err.path) or "(top)"
        msg = err.message if len(err.message) <= 200 else err.message[:197] + "..."
        out.append(f"{where}: {msg}")
    return out


def first_error(name: str, doc: Any) -> str | None:
    """The first problem (cheap: stops at the first error), or None when valid."""
    err = next(iter(validator(name).iter_errors(doc)), None)
    if err is None:
        return None
    where = "/".join(str(p) for p in err.path) or "(top)"
    msg = err.message if len(err.message) <= 200 else err.message[:197] + "..."
    return f"{where}: {msg}"
