"""The JSON Schemas of bundle documents (shipped in trackport/schemas/), and validation.

Validators are built once per schema and cached; they are safe to share between threads.
The bodies of generic unit documents are checked against the schema their kind registers
(trackport.kinds), cached the same way.
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
UNIT = "unit"
MANIFEST_ENTRY = "manifest-entry"
IDMAP_ENTRY = "idmap-entry"
LEDGER_ENTRY = "ledger-entry"
TRANSFER_EVENT = "transfer-event"
NAMES = (BUNDLE, EXPERIMENT, RUN, UNIT, MANIFEST_ENTRY, IDMAP_ENTRY, LEDGER_ENTRY, TRANSFER_EVENT)
MAX_ERRORS = 5  # per document: enough to fix it, few enough to read

_lock = threading.Lock()
_validators: dict[str, Draft202012Validator] = {}
# id(schema) -> (schema, validator): the schema is kept so that its id is not reused.
_body_validators: dict[int, tuple[dict, Draft202012Validator]] = {}


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


def body_validator(schema: dict) -> Draft202012Validator:
    """The validator of a unit kind's body schema (a bad schema is a bug of its
    registration: jsonschema's SchemaError is raised)."""
    with _lock:
        cached = _body_validators.get(id(schema))
        if cached is None or cached[0] is not schema:
            Draft202012Validator.check_schema(schema)
            cached = _body_validators[id(schema)] = (schema, Draft202012Validator(schema))
        return cached[1]


def _messages(v: Draft202012Validator, doc: Any, limit: int) -> list[str]:
    out = []
    for err in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.path)))[:limit]:
        where = "/".join(str(p) for p in err.path) or "(top)"
        msg = err.message if len(err.message) <= 200 else err.message[:197] + "..."
        out.append(f"{where}: {msg}")
    return out


def errors(name: str, doc: Any, limit: int = MAX_ERRORS) -> list[str]:
    """How doc breaks the schema, as short one-line messages ([] when valid)."""
    return _messages(validator(name), doc, limit)


def body_errors(schema: dict, body: Any, limit: int = MAX_ERRORS) -> list[str]:
    """How a unit's body breaks its kind's schema ([] when valid)."""
    return _messages(body_validator(schema), body, limit)
