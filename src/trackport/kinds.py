"""The kinds of units a transfer moves, and the document form of the generic ones.

Experiments and runs are the two kinds every store holds; every other kind (a logged model,
a model version, a trace, ...) is registered here with the kinds its units depend on, and
travels as a `Unit`: an id, the experiment it belongs to, the ids of the units it refers
to (remapped by the engine on the way), and a JSON body. The engine, id map, ledger,
summary and status know kinds only through this registry, so a new kind is a
registration plus the adapter methods of the stores that hold it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

# The JSON Schemas shipped with trackport (bundle documents and the bodies of unit kinds).
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


@dataclass(frozen=True)
class UnitKind:
    name: str  # singular, as ledger and id map lines name it: "run"
    plural: str  # summary keys, bundle folders and messages: "runs"
    # Kinds whose units this kind's units refer to (a run: its experiment and parent run).
    depends_on: tuple[str, ...] = ()
    # The JSON Schema a bundle checks the body of this kind's documents against.
    schema: dict | None = None
    # "experiment": each unit belongs to one experiment, moved with it; "workspace": the
    # units belong to the whole store (the model registry), moved after every experiment.
    scope: str = "experiment"
    # Its units carry files (a logged model's artifacts): stores list and open them, and
    # a sink is handed them as it writes the unit.
    has_files: bool = False
    # Body fields a verify does not compare: what a target may set itself (creation times
    # on a server) or what only says where the source kept something.
    compare_ignores: tuple[str, ...] = ()
    # Body lists a verify compares item by item, each item found by a key: (field, key,
    # what an item is called), e.g. ("spans", "span_id", "span"): a missing or changed item
    # is named, not the whole list.
    compare_items: tuple[tuple[str, str, str], ...] = ()

    def count(self, n: int) -> str:
        """'1 run', '12,345 runs'."""
        return f"{n:,} {self.name if n == 1 else self.plural}"


@dataclass(frozen=True)
class Unit:
    """One unit of a generic kind, as stores read and write it."""

    kind: str
    unit_id: str  # its id in the store it was read from
    experiment_id: str | None  # the experiment it belongs to, in that store; None: the workspace
    name: str = ""
    # The units it refers to, by name: {"run": "<run id>"}. A name is a kind's name, or the
    # kind's name, "#" and a label where a unit refers to several units of one kind
    # ({"run": ..., "run#2": ...}; see ref_kind); the body names them by these names, never
    # by id, so a body is the same in every store. The engine rewrites them to the target's
    # ids before a sink sees the unit. A workspace unit that refers to a run names the
    # run's experiment too ({"experiment": ..., "run": ...}): runs are found in it.
    refs: dict[str, str] = field(default_factory=dict)
    body: dict = field(default_factory=dict)  # JSON-able content
    # Set by the engine on the unit a sink is handed: the refs as the source has them (the
    # sink rewrites source ids inside data, such as a version's source URI), and the names
    # of refs whose unit the target does not hold (they keep the source id; the loss is
    # recorded). A sink that gives new ids leaves those references out.
    source_refs: dict[str, str] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()

    def target(self, ref_name: str) -> str | None:
        """The target's id of what the ref names, None when the target does not hold it."""
        return None if ref_name in self.missing else self.refs.get(ref_name)

    def id_changes(self) -> dict[str, str]:
        """Source id -> target id of every ref the target holds (set by the engine)."""
        return {self.source_refs[n]: i for n, i in self.refs.items() if n in self.source_refs and n not in self.missing}


def ref_kind(ref_name: str) -> str:
    """The kind a reference of that name names: "run#2" -> "run"."""
    return ref_name.split("#", 1)[0]


EXPERIMENT = UnitKind("experiment", "experiments")
RUN = UnitKind("run", "runs", depends_on=("experiment", "run"))

_KINDS: dict[str, UnitKind] = {EXPERIMENT.name: EXPERIMENT, RUN.name: RUN}
BUILT_IN = frozenset(_KINDS)


def register(kind: UnitKind) -> UnitKind:
    if kind.name in BUILT_IN:
        raise ValueError(f"unit kind {kind.name!r} is built in")
    if kind.scope not in ("experiment", "workspace"):
        raise ValueError(f"unit kind {kind.name!r}: scope must be 'experiment' or 'workspace'")
    _KINDS[kind.name] = kind
    return kind


def _schema(name: str) -> dict:
    with open(SCHEMA_DIR / f"{name}.schema.json", encoding="utf-8") as f:
        return json.load(f)


# MLflow 3's model objects (trackport.models builds their units; docs/bundle-format.md).
LOGGED_MODEL = register(UnitKind(
    "logged_model", "logged_models", depends_on=("experiment", "run"), schema=_schema("logged-model"),
    has_files=True, compare_ignores=("artifact_location", "creation_timestamp", "last_updated_timestamp"),
))
REGISTERED_MODEL = register(UnitKind(
    "registered_model", "registered_models", depends_on=("experiment",), schema=_schema("registered-model"),
    scope="workspace", compare_ignores=("creation_timestamp", "last_updated_timestamp"),
))
MODEL_VERSION = register(UnitKind(
    "model_version", "model_versions", depends_on=("registered_model", "model_version", "experiment", "run", "logged_model"),
    schema=_schema("model-version"), scope="workspace",
    compare_ignores=("creation_timestamp", "last_updated_timestamp", "user_id", "source", "deleted_after"),
))
# MLflow 3's traces (trackport.traces builds their units; a bundle keeps spans in Parquet: bundle/spans.py).
TRACE = register(UnitKind(
    "trace", "traces", depends_on=("experiment", "run", "logged_model"), schema=_schema("trace"),
    compare_ignores=("spans_location", "artifact_location", "info_finalized"),
    compare_items=(("spans", "span_id", "span"), ("assessments", "assessment_id", "assessment")),
))

# MLflow 3's evaluation datasets (of the workspace, linked to experiments as refs) and
# registered scorers (of an experiment); trackport.genai builds their units.
EVALUATION_DATASET = register(UnitKind(
    "evaluation_dataset", "evaluation_datasets", depends_on=("experiment",), schema=_schema("evaluation-dataset"),
    scope="workspace", compare_ignores=("created_time", "last_update_time", "digest", "last_updated_by", "record_meta"),
    compare_items=(("records", "input_hash", "record"),),
))
SCORER = register(UnitKind(
    "scorer", "scorers", depends_on=("experiment",), schema=_schema("scorer"), compare_ignores=("creation_times",),
    compare_items=(("versions", "version", "version"),),
))


def unregister(name: str) -> None:
    if name not in BUILT_IN:
        _KINDS.pop(name, None)


def kind(name: str) -> UnitKind:
    """The registered kind of that name; a kind no longer registered (read back from an
    old ledger) is still named sensibly."""
    return _KINDS.get(name) or UnitKind(name, name + "s")


def names() -> list[str]:
    """Every registered kind's name: experiments and runs first."""
    return list(_KINDS)


def depended_on() -> frozenset[str]:
    """The kinds some kind's units refer to (experiments, runs, logged models, ...): what a
    transfer or a verify remembers of each unit it settles. Nothing refers to a trace, so a
    million traces leave nothing behind."""
    return frozenset(d for k in _KINDS.values() for d in k.depends_on)


def generic_kinds(scope: str = "experiment") -> Iterator[UnitKind]:
    """The registered kinds beyond experiments and runs of that scope, dependencies first."""
    done: set[str] = set(BUILT_IN) | {k.name for k in _KINDS.values() if k.scope != scope}
    pending = [k for k in _KINDS.values() if k.name not in BUILT_IN and k.scope == scope]
    while pending:
        ready = [k for k in pending if all(d in done or d not in _KINDS for d in k.depends_on if d != k.name)]
        if not ready:
            raise ValueError(f"unit kinds depend on each other in a circle: {[k.name for k in pending]}")
        for k in sorted(ready, key=lambda k: k.name):
            done.add(k.name)
            pending.remove(k)
            yield k
