"""A transfer split into shards that separate machines run on their own (docs/scale-out.md).

`make_plan` lists the selected runs once (as DistCp makes its copy listing), groups each run
with its descendants into one family (a child is written after its parent, and both land in
one bundle part), and deals the families out to N shards, heaviest first, each to the
lightest shard so far (longest-processing-time first: within 4/3 of the best balance). A
run's weight is what a cheap listing tells of its size: 1 for the run and 1 per metric key,
each key being one history to read and write (the listing gives no history lengths or
artifact sizes). A shard is a transfer from the source as `ShardSource` shows it: only
the shard's experiments and runs (experiments holding no selected run go with shard 0),
the units anchored to those runs, and no registry (it is moved once, after the shards).
There are at most as many shards as run families.

The plan is a small JSON document (schemas/plan.schema.json) naming its source without
credentials; each machine brings its own, as for any transfer.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from jsonschema import Draft202012Validator

from trackport._files import write_bytes_atomic
from trackport.domain import Experiment, Run
from trackport.errors import BadInputError
from trackport.kinds import SCHEMA_DIR
from trackport.selection import runs_of
from trackport import kinds
from trackport.kinds import Unit
from trackport.stores.base import Selection, SourceStore, Unreadable
from trackport.transfer.plan import plan_transfer

PLAN_FORMAT = "trackport-plan"
PLAN_VERSION = "1.0"
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"  # Kubernetes Indexed Jobs set it in each pod
SUMMARY_BATCH = 500  # runs per metric-summary listing


@dataclass(frozen=True)
class Shard:
    index: int
    run_ids: tuple[str, ...]
    experiment_ids: tuple[str, ...]  # the experiments it writes (with runs or, shard 0, without)
    weight: int


@dataclass(frozen=True)
class ShardPlan:
    plan_id: str
    source: str  # the source's URI, as `describe()` gives it: no credentials
    selection: Selection
    shards: tuple[Shard, ...]
    created_at: str

    @property
    def runs(self) -> int:
        return sum(len(s.run_ids) for s in self.shards)

    def shard(self, index: int) -> Shard:
        if not 0 <= index < len(self.shards):
            raise BadInputError(f"shard {index} is not in the plan: it has shards 0 to {len(self.shards) - 1}")
        return self.shards[index]

    def to_json(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "format_version": PLAN_VERSION,
            "plan_id": self.plan_id,
            "created_at": self.created_at,
            "source": self.source,
            "selection": self.selection.to_json(),
            "counts": {"shards": len(self.shards), "runs": self.runs},
            "shards": [dataclasses.asdict(s) | {"run_ids": list(s.run_ids), "experiment_ids": list(s.experiment_ids)}
                       for s in self.shards],
        }


def make_plan(source: SourceStore, selection: Selection, shards: int) -> ShardPlan:
    """List the selected runs once and deal their families out to `shards` shards."""
    if shards < 1:
        raise BadInputError(f"--shards must be at least 1, not {shards}")
    if selection.models or selection.models_only:
        raise BadInputError(
            "a plan shards experiments and runs; move the registry after the shards are done"
            " (trackport copy SOURCE TARGET --models-only)"
        )
    planned = plan_transfer(source, selection)
    experiments: list[Experiment] = []
    runs: list[Run] = []
    for entry in planned.experiments:
        if entry.not_selected is not None:
            continue
        if isinstance(entry.unit, Unreadable):
            raise BadInputError(f"experiment {entry.unit.source_id} cannot be read ({entry.unit.reason}); fix the source, then plan again")
        experiments.append(entry.unit)
        for run in runs_of(source, entry.unit, planned.selection):
            if isinstance(run, Unreadable):
                raise BadInputError(f"run {run.source_id} cannot be read ({run.reason}); fix the source, then plan again")
            runs.append(run)
    weights = _weights(source, runs)
    families = _families(runs)
    shards = min(shards, len(families))  # a shard without runs would have nothing to move
    loads: list[tuple[int, int]] = [(0, k) for k in range(shards)]  # (weight, shard index), a heap
    dealt: list[list[str]] = [[] for _ in range(shards)]
    totals = [0] * shards
    weighed = [(sum(weights[r] for r in family), family) for family in families]
    for weight, family in sorted(weighed, key=lambda wf: (-wf[0], wf[1][0])):
        total, k = heapq.heappop(loads)
        dealt[k] += family
        totals[k] = total + weight
        heapq.heappush(loads, (totals[k], k))
    experiment_of = {r.run_id: r.experiment_id for r in runs}
    with_runs = set(experiment_of.values())
    empty = [e.experiment_id for e in experiments if e.experiment_id not in with_runs]
    order = {r.run_id: i for i, r in enumerate(runs)}  # the listing's order: parents first
    ordered = [sorted(ids, key=order.__getitem__) for ids in dealt]
    built = tuple(
        Shard(k, tuple(ids), tuple(dict.fromkeys([experiment_of[r] for r in ids] + (empty if k == 0 else []))), totals[k])
        for k, ids in enumerate(ordered)
    )
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    digest = hashlib.sha256(json.dumps([source.describe().uri, created, [s.run_ids for s in built]]).encode())
    return ShardPlan(digest.hexdigest()[:16], source.describe().uri, planned.selection, built, created)


def _weights(source: SourceStore, runs: list[Run]) -> dict[str, int]:
    """1 per run and 1 per metric key, from the latest values (a cheap listing)."""
    weights = {}
    for start in range(0, len(runs), SUMMARY_BATCH):
        batch = runs[start : start + SUMMARY_BATCH]
        summaries = source.metric_summaries(batch, None, whole_history=False)
        for run in batch:
            weights[run.run_id] = 1 + len(summaries.get(run.run_id, {}))
    return weights


def _families(runs: list[Run]) -> list[list[str]]:
    """The runs grouped by their oldest selected ancestor, each group in listing order."""
    parent = {r.run_id: r.parent_run_id for r in runs}

    def root(run_id: str) -> str:
        seen = set()
        while parent.get(run_id) in parent and run_id not in seen:  # a cycle cannot hang it
            seen.add(run_id)
            run_id = parent[run_id]
        return run_id

    families: dict[str, list[str]] = {}
    for run in runs:
        families.setdefault(root(run.run_id), []).append(run.run_id)
    return list(families.values())


# -- the plan file ----------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMA_DIR / "plan.schema.json").read_text(encoding="utf-8")))


def save_plan(plan: ShardPlan, path: Path) -> None:
    write_bytes_atomic(path, (json.dumps(plan.to_json(), indent=1, sort_keys=True) + "\n").encode())


def load_plan(path: str | os.PathLike) -> ShardPlan:
    """Read and check a plan file; BadInputError (one line) for anything else."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read the plan ({exc.strerror or exc}); give the file `trackport plan` wrote") from None
    except ValueError as exc:
        raise BadInputError(f"{path}: not a trackport plan ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise BadInputError(f"{path}: not a trackport plan (format is not {PLAN_FORMAT!r})")
    if str(doc.get("format_version", "")).split(".")[0] != PLAN_VERSION.split(".")[0]:
        raise BadInputError(f"{path}: plan format {doc.get('format_version')!r} is not {PLAN_VERSION[0]}.x; upgrade trackport")
    problem = next(iter(_validator().iter_errors(doc)), None)
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path) or "the document"
        raise BadInputError(f"{path}: does not match the plan schema at {where}: {problem.message}")
    selection = Selection(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc["selection"].items()})
    shards = tuple(
        Shard(s["index"], tuple(s["run_ids"]), tuple(s["experiment_ids"]), s["weight"]) for s in doc["shards"]
    )
    if [s.index for s in shards] != list(range(len(shards))):
        raise BadInputError(f"{path}: the shards are not numbered 0 to {len(shards) - 1}")
    return ShardPlan(doc["plan_id"], doc["source"], selection, shards, doc["created_at"])


def shard_index(given: int | None) -> int:
    """--shard K, else the index a Kubernetes Indexed Job gives its pod."""
    if given is not None:
        return given
    value = os.environ.get(INDEX_VARIABLE)
    if value is None:
        raise BadInputError(f"give --shard K (or set {INDEX_VARIABLE}, as a Kubernetes Indexed Job does)")
    try:
        return int(value)
    except ValueError:
        raise BadInputError(f"{INDEX_VARIABLE}={value!r} is not a shard number") from None


def shard_selection(plan: ShardPlan) -> Selection:
    """The selection a shard runs with: all that its ShardSource shows (the plan selected),
    leaving the kinds the plan leaves and taking the traces it takes (the ShardSource narrows
    runs and experiments only)."""
    planned = plan.selection
    return Selection(
        include_deleted=True, leave_kinds=planned.leave_kinds,
        trace_filter=planned.trace_filter, traces_since=planned.traces_since,
    )


def _unit_listings() -> set[str]:
    return {k.plural for scope in ("experiment", "workspace") for k in kinds.generic_kinds(scope)}


class ShardSource:
    """The plan's source as shard `index` sees it: the shard's experiments and runs, the
    units of its experiments anchored to its runs (those anchored to no run go with the
    experiment's first shard), and no workspace units (the registry). Everything else is
    the source's own."""

    def __init__(self, source: SourceStore, plan: ShardPlan, index: int) -> None:
        shard = plan.shard(index)
        self.plan_id, self.index = plan.plan_id, index
        self._source = source
        self._experiments = frozenset(shard.experiment_ids)
        self._runs = frozenset(shard.run_ids)
        earlier = {e for s in plan.shards[:index] for e in s.experiment_ids}
        self._owned = self._experiments - earlier  # experiments whose run-less units are this shard's
        self.takes_deleted_by_default = True  # the plan selected; a shard takes what it lists

    def __getattr__(self, name: str):
        """The source's own, but its unit listings (iter_units, iter_<plural>) narrowed to
        the shard; a source that lists no units of a kind still lists none."""
        attribute = getattr(self._source, name)
        if name == "iter_units":
            return lambda kind, experiment: self._narrowed(None if experiment is None else attribute(kind, experiment), experiment)
        if name.startswith("iter_") and name[len("iter_"):] in _unit_listings():
            # an experiment's units, or (given a Selection) the workspace's
            # (a trace listing takes a Selection after the experiment: handed on)
            return lambda scope, *rest: self._narrowed(attribute(scope, *rest) if isinstance(scope, Experiment) else None, scope)
        return attribute

    def list_experiments(self, selection: Selection) -> Iterator[Experiment | Unreadable]:
        for experiment in self._source.list_experiments(selection):
            if (experiment.source_id if isinstance(experiment, Unreadable) else experiment.experiment_id) in self._experiments:
                yield experiment

    def iter_runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run | Unreadable]:
        for run in self._source.iter_runs(experiment, selection):
            if (run.source_id if isinstance(run, Unreadable) else run.run_id) in self._runs:
                yield run

    def count_runs(self, experiment: Experiment, selection: Selection) -> int | None:
        return None

    def _narrowed(self, listing, scope) -> Iterator[Unit | Unreadable]:
        """An experiment's units anchored to this shard's runs (and, in the experiment's
        first shard, those of no run); none of the workspace's (moved after the shards)."""
        if listing is None:
            return iter(())
        owned = scope.experiment_id in self._owned
        return (u for u in listing if self._takes(u, owned))

    def _takes(self, unit: Unit | Unreadable, owned: bool) -> bool:
        if isinstance(unit, Unit) and "run" in unit.refs:
            return unit.refs["run"] in self._runs
        return owned

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> "ShardSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
