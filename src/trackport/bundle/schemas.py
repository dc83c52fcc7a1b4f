"""The JSON Schemas of bundle documents (shipped in trackport/schemas/), and validation.

Validators are built once per schema and cached; they are safe to share between threads.
The bodies of generic unit documents are checked against the schema their kind registers
(trackport.kinds), cached the same way.

Every document is first asked of jsonschema-rs (compiled, about 40 times faster: a trace's
document is checked when written and when read, a million times for a million traces), and
only a document it does not pass is checked again by jsonschema, whose verdict and messages
stand. So jsonschema-rs only ever saves time: where the two differ (Python's `$` matching
before a final newline, NaN, keys that are not strings), jsonschema decides as before.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import jsonschema_rs
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


class _Validators:
    """jsonschema-rs's validator of a schema (the quick yes) and jsonschema's (the verdict)."""

    def __init__(self, schema: dict) -> None:
        Draft202012Validator.check_schema(schema)
        self.full = Draft202012Validator(schema)
        self.quick = jsonschema_rs.Draft202012Validator(schema, validate_formats=False)

    def passes(self, doc: Any) -> bool:
        try:
            return self.quick.is_valid(doc)
        except (ValueError, TypeError, OverflowError):  # a value it cannot take (a non-string key)
            return False

_validators: dict[str, _Validators] = {}
# id(schema) -> (schema, validators): the schema is kept so that its id is not reused.
_body_validators: dict[int, tuple[dict, _Validators]] = {}


def schema_path(name: str) -> Path:
    if name not in NAMES:
        raise KeyError(f"unknown bundle schema {name!r}")
    return SCHEMA_DIR / f"{name}.schema.json"


def load_schema(name: str) -> dict:
    with open(schema_path(name), encoding="utf-8") as f:
        return json.load(f)


def _named(name: str) -> _Validators:
    with _lock:
        v = _validators.get(name)
        if v is None:
            v = _validators[name] = _Validators(load_schema(name))
        return v


def _body(schema: dict) -> _Validators:
    """The validators of a unit kind's body schema (a bad schema is a bug of its
    registration: jsonschema's SchemaError is raised)."""
    with _lock:
        cached = _body_validators.get(id(schema))
        if cached is None or cached[0] is not schema:
            cached = _body_validators[id(schema)] = (schema, _Validators(schema))
        return cached[1]


def _messages(v: _Validators, doc: Any, limit: int) -> list[str]:
    if v.passes(doc):
        return []
    out = []
    for err in sorted(v.full.iter_errors(doc), key=lambda e: list(map(str, e.path)))[:limit]:
        where = "/".join(str(p) for p in err.path) or "(top)"
        msg = err.message if len(err.message) <= 200 else err.message[:197] + "..."
        out.append(f"{where}: {msg}")
    return out


def errors(name: str, doc: Any, limit: int = MAX_ERRORS) -> list[str]:
    """How doc breaks the schema, as short one-line messages ([] when valid)."""
    return _messages(_named(name), doc, limit)


def body_errors(schema: dict, body: Any, limit: int = MAX_ERRORS) -> list[str]:
    """How a unit's body breaks its kind's schema ([] when valid)."""
    return _messages(_body(schema), body, limit)
