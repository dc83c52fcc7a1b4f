"""Field-by-field comparison of the units of generic kinds (logged models, the registry,
traces, ...) two stores hold: part of the proof that nothing was lost (transfer/compare.py).

A copy is found by the provenance tag a target that gives new ids writes
(provenance.SOURCE_UNIT_TAG), else by its id, else by its name when that is unique, among
the target's units kept in a temporary file (transfer/unit_index.py: a million traces do
not fit in memory). What a transfer changes on purpose is allowed: ids (in refs, in a
version's source, in MLmodel files), trackport's provenance tags, a trace's own id inside
it (a copy under a new trace id), scorer version numbers (compared in order), the body
fields a kind lists in compare_ignores (times a server sets itself), and the server-kept
list of versions registered from a logged model (`mlflow.modelVersions`, whose entries a
server writes twice, as number and as text).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import BinaryIO, Callable, ContextManager, Iterator

from trackport import kinds
from trackport.genai import numbered_in_order
from trackport.kinds import Unit
from trackport.models import MODEL_VERSIONS_TAG, relink_experiments
from trackport.provenance import is_mlmodel, is_provenance_tag, rewrite_mlmodel, source_shape
from trackport.stores.base import SourceStore, Unreadable
from trackport.traces import renamed_trace
from trackport.transfer.unit_index import UnitIndex, through_json
from trackport.transfer.units import UnitType

IdMap = Callable[[str, str], str]  # (kind, source id) -> target id (the source id when unknown)
_CHUNK = 1 << 20
_MAX_FLOAT = 1.7976931348623157e308


def compare_units(
    where: str,
    unit_type: UnitType,
    expected: SourceStore,
    mine,
    actual: SourceStore,
    theirs,
    id_map: IdMap,
    matched: dict[tuple[str, str], str],
    level: str,
    clamps: bool = False,
) -> Iterator[tuple[str, str]]:
    """(where, what) for every difference between the units of one kind in two listings.
    Each unit compared of a kind others refer to is added to matched (source id -> the
    copy's id). clamps: the actual
    store keeps a logged model's NaN as 0 and ±inf as ±1.7976931348623157e308 (SQL servers)."""
    own_experiment = "experiment" if unit_type.kind.scope == "experiment" else None
    remembered = unit_type.kind.name in kinds.depended_on()  # matched: what later refs are mapped through
    with UnitIndex(() if theirs is None else theirs) as index:
        for unit in mine:
            if isinstance(unit, Unreadable):
                yield f"{unit.kind} {unit.source_id}", f"unreadable: {unit.reason}"
                continue
            unit_where = f"{where}, {unit.kind} {unit.name or unit.unit_id!r}"
            copy = index.copy_of(unit)
            if copy is None:
                yield unit_where, "missing"
                continue
            if remembered:
                matched[(unit.kind, unit.unit_id)] = copy.unit_id
            refs = {n: id_map(kinds.ref_kind(n), v) for n, v in unit.refs.items() if n != own_experiment}
            theirs_refs = {n: v for n, v in copy.refs.items() if n != own_experiment}
            if refs != theirs_refs:
                yield unit_where, f"references {refs} != {theirs_refs}"
            if level == "full":
                for what in _body_differences(*_comparable(unit, copy, clamps), id_map):
                    yield unit_where, what
            if unit_type.kind.has_files:
                for what in _file_differences(expected, unit, actual, copy, id_map, level):
                    yield unit_where, what


def _comparable(unit: Unit, copy: Unit, clamps: bool) -> tuple[Unit, Unit]:
    """The source's unit and its copy as they are compared: the source's through JSON as the
    copy came (unit_index), a trace under its copy's id (a copy under a new id names it
    inside: traces.py), a scorer's versions numbered in order (a server renumbers gaps, a
    recorded loss), a logged model's metrics clamped where the target clamps them."""
    unit = through_json(unit)
    if unit.kind == kinds.TRACE.name:
        unit = renamed_trace(unit, copy.unit_id)
    elif unit.kind == kinds.SCORER.name:
        unit, copy = numbered_in_order(unit), numbered_in_order(copy)
    return (_clamped(unit) if clamps else unit), copy


def _body_differences(unit: Unit, copy: Unit, id_map: IdMap) -> Iterator[str]:
    ignored = set(kinds.kind(unit.kind).compare_ignores)
    a = {k: v for k, v in unit.body.items() if k not in ignored}
    b = {k: v for k, v in copy.body.items() if k not in ignored}
    if isinstance(a.get("tags"), dict):
        experiments = {e: id_map("experiment", e) for n, e in unit.refs.items() if kinds.ref_kind(n) == "experiment"}
        a["tags"] = _comparable_tags(relink_experiments(a["tags"], experiments))
    if isinstance(b.get("tags"), dict):
        b["tags"] = _comparable_tags(b["tags"])
    items = {field: (key, noun) for field, key, noun in kinds.kind(unit.kind).compare_items}
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) == b.get(key):
            continue
        if key in items and isinstance(a.get(key), list) and isinstance(b.get(key), list):
            yield from _item_differences(a[key], b[key], *items[key])
        else:
            yield f"{key}: {_shown(a.get(key))} != {_shown(b.get(key))}"
    if unit.kind == kinds.MODEL_VERSION.name:
        roles_a = {unit.refs[n]: "{" + n + "}" for n in ("run", "logged_model") if n in unit.refs}
        roles_b = {copy.refs[n]: "{" + n + "}" for n in ("run", "logged_model") if n in copy.refs}
        mine, theirs = source_shape(unit.body["source"], roles_a), source_shape(copy.body["source"], roles_b)
        if mine != theirs:
            yield f"source: {_shown(unit.body['source'])} != {_shown(copy.body['source'])}"


def _item_differences(mine: list, theirs: list, key: str, noun: str) -> Iterator[str]:
    """A body list compared item by item (kinds.UnitKind.compare_items): "span 6109...
    ('retrieve') missing", "span 6109... ('retrieve'): attributes: ... != ...". """
    def by_key(items: list) -> dict:
        return {str(i.get(key)): i for i in items if isinstance(i, dict)}

    a, b = by_key(mine), by_key(theirs)
    if len(a) != len(mine) or len(b) != len(theirs):  # unkeyed or repeated items: the list as a whole
        yield f"{noun}s: {_shown(mine)} != {_shown(theirs)}"
        return
    for item_id in [i for i in a if i not in b] + [i for i in b if i not in a] + [i for i in a if i in b]:
        x, y = a.get(item_id), b.get(item_id)
        label = f"{noun} {item_id}" + (f" ({(x or y).get('name')!r})" if (x or y).get("name") else "")
        if y is None:
            yield f"{label} missing"
        elif x is None:
            yield f"{label} unexpected"
        else:
            for field in sorted(x.keys() | y.keys()):
                if x.get(field) != y.get(field):
                    yield f"{label}: {field}: {_shown(x.get(field))} != {_shown(y.get(field))}"
    if [str(i.get(key)) for i in mine] != [str(i.get(key)) for i in theirs] and a.keys() == b.keys():
        yield f"{noun}s in another order"


def _clamped(unit: Unit) -> Unit:
    """A logged model as a SQL-backed server keeps its metrics (no NaN, ±inf clamped)."""
    if unit.kind != kinds.LOGGED_MODEL.name:
        return unit
    clamp = {"NaN": 0.0, "Infinity": _MAX_FLOAT, "-Infinity": -_MAX_FLOAT}
    metrics = [dict(m, value=clamp.get(m["value"], m["value"])) if isinstance(m["value"], str) else m
               for m in unit.body.get("metrics") or ()]
    return dataclasses.replace(unit, body={**unit.body, "metrics": metrics})


def _comparable_tags(tags: dict) -> dict:
    """Without provenance tags; the versions registered from a logged model as a set."""
    out = {k: v for k, v in tags.items() if not is_provenance_tag(k)}
    if MODEL_VERSIONS_TAG in out:
        try:
            entries = json.loads(out[MODEL_VERSIONS_TAG])
            out[MODEL_VERSIONS_TAG] = sorted({(str(e["name"]), str(e["version"])) for e in entries})
        except (ValueError, TypeError, KeyError):
            pass  # compared as it is
    return out


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _file_differences(
    expected: SourceStore, unit: Unit, actual: SourceStore, copy: Unit, id_map: IdMap, level: str
) -> Iterator[str]:
    files_a = {f.path: f.size for f in expected.list_unit_artifacts(unit)}
    files_b = {f.path: f.size for f in actual.list_unit_artifacts(copy)}
    ids = {v: id_map(kinds.ref_kind(n), v) for n, v in unit.refs.items() if kinds.ref_kind(n) in ("run", "logged_model")}
    ids[unit.unit_id] = copy.unit_id
    locations = {unit.body.get("artifact_location") or "": copy.body.get("artifact_location") or ""}
    for path in sorted(files_a.keys() | files_b.keys()):
        if path not in files_b:
            yield f"file {path!r} missing"
        elif path not in files_a:
            yield f"file {path!r} unexpected"
        elif is_mlmodel(path) and level == "full":
            with expected.open_unit_artifact(unit, path) as stream:
                want = hashlib.sha256(rewrite_mlmodel(stream.read(), ids, locations)).hexdigest()
            if want != _sha256(actual, copy, path):
                yield f"file {path!r}: content differs (sha256; ids and locations rewritten)"
        elif files_a[path] != files_b[path]:
            yield f"file {path!r}: {files_a[path]} bytes expected, {files_b[path]} found"
        elif level == "full" and _sha256(expected, unit, path) != _sha256(actual, copy, path):
            yield f"file {path!r}: content differs (sha256)"


def _sha256(store: SourceStore, unit: Unit, path: str) -> str:
    return sha256_of(store.open_unit_artifact(unit, path))


def sha256_of(opened: ContextManager[BinaryIO]) -> str:
    """The sha256 of what a stream gives, read in chunks, the stream closed after."""
    digest = hashlib.sha256()
    with opened as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

