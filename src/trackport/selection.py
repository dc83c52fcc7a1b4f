"""What a Selection means, decided once for every source.

A source supplies raw listings (every experiment it holds, where given run ids live, an
experiment's runs with as much of the selection pushed down as it can, declared in its
`SourceFeatures`); the rules are here, so every source kind gives the same experiments and
runs in the same order:

- `--experiment REF`: `id:2`, `name:2`, or a bare `2` that is whichever exists (refused as
  ambiguous when it is one experiment's id and another's name);
- `--run-id`: only the experiments that hold those runs; an id the source does not hold is
  refused, naming it;
- deleted experiments and runs only with include_deleted;
- experiments and runs oldest first: experiments by creation time, runs by start time,
  those without one last (as MLflow's own search orders runs), ties by id (numeric ids by
  value). Ids differ between stores that hold the same data; times do not.
"""
from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

from trackport.domain import DELETED, Experiment, Run
from trackport.errors import BadInputError
from trackport.kinds import MODEL_VERSION, REGISTERED_MODEL, Unit, UnitKind
from trackport.models import name_matches, split_version_id
from trackport.search import SUMMARY_BATCH, filter_runs, metric_summaries
from trackport.stores.base import Selection, SourceStore, Unreadable

T = TypeVar("T")  # anything with .experiment_id and .name (an Experiment, a database row)


def parse_ref(ref: str) -> tuple[str | None, str]:
    """("id" | "name" | None, value)."""
    for kind in ("id", "name"):
        if ref.startswith(kind + ":"):
            return kind, ref[len(kind) + 1 :]
    return None, ref


def pick_experiment(ref: str, by_id: Callable[[str], T | None], by_name: Callable[[str], T | None], where: str) -> T:
    """The one experiment `--experiment ref` names; BadInputError when none or two do."""
    kind, value = parse_ref(ref)
    with_id = by_id(value) if kind in (None, "id") else None
    with_name = by_name(value) if kind in (None, "name") else None
    if with_id is not None and with_name is not None and str(with_id.experiment_id) != str(with_name.experiment_id):
        raise BadInputError(
            f"--experiment {ref!r} is ambiguous in {where}: {value!r} is the id of experiment {with_id.name!r}"
            f" and the name of experiment {with_name.experiment_id}; say id:{value} or name:{value}"
        )
    found = with_id if with_id is not None else with_name
    if found is None:
        what = {"id": "with id", "name": "named", None: "named or with id"}[kind]
        raise BadInputError(f"no experiment {what} {value!r} in {where}")
    return found


def id_order(experiment_id: str) -> tuple:
    """Numeric ids by value (2 before 10), then the others as text."""
    return (0, int(experiment_id), "") if experiment_id.isdigit() else (1, 0, experiment_id)


def experiment_order(experiment: Experiment | Unreadable) -> tuple:
    created = experiment.creation_time if isinstance(experiment, Experiment) else None
    return (created is None, created or 0, id_order(_id(experiment)))


def run_order(run: Run) -> tuple:
    return (run.start_time is None, run.start_time or 0, run.run_id)


def resolve_experiments(
    selection: Selection,
    experiments: Iterable[Experiment | Unreadable],
    locate_runs: Callable[[list[str]], dict[str, str]],
    where: str,
) -> list[Experiment | Unreadable]:
    """The experiments the selection covers, oldest first.

    experiments: every experiment the source holds, deleted ones too. locate_runs: for run
    ids, the experiment id of each one the source holds (ids it does not hold left out)."""
    held = sorted(experiments, key=experiment_order)
    chosen = held
    if selection.experiments:
        # An unreadable experiment can be named by its id only: its name is in the damage.
        by_id = {_id(e): e if isinstance(e, Experiment) else Experiment(_id(e), "(unreadable)") for e in held}
        by_name = {e.name: e for e in held if isinstance(e, Experiment)}
        wanted = {_id(pick_experiment(ref, by_id.get, by_name.get, where)) for ref in selection.experiments}
        chosen = [e for e in chosen if _id(e) in wanted]
    if selection.run_ids:
        homes = locate_runs(list(dict.fromkeys(selection.run_ids)))
        missing = [r for r in dict.fromkeys(selection.run_ids) if r not in homes]
        if missing and not selection.runs_from_models:
            raise BadInputError(f"run(s) not found in {where}: {', '.join(missing)}")
        holding = set(homes.values())
        chosen = [e for e in chosen if _id(e) in holding]
    if not selection.include_deleted:
        chosen = [e for e in chosen if not (isinstance(e, Experiment) and e.lifecycle_stage == DELETED)]
    return chosen


def select_runs(runs: Iterable[Run | Unreadable], selection: Selection) -> Iterator[Run | Unreadable]:
    """The runs of one experiment the selection covers, from a listing that may hold more
    (what the source could not push down is applied here)."""
    wanted = set(selection.run_ids)
    for run in runs:
        run_id = run.source_id if isinstance(run, Unreadable) else run.run_id
        if wanted and run_id not in wanted:
            continue
        if isinstance(run, Run) and run.lifecycle_stage == DELETED and not selection.include_deleted:
            continue
        yield run


def runs_of(source: SourceStore, experiment: Experiment, selection: Selection) -> Iterator[Run | Unreadable]:
    """The experiment's runs the selection takes, from any source, in run_order. The source
    pushes down what it can (SourceStore.iter_runs may give more runs than the filter and
    time bounds take, never fewer); the whole selection is evaluated here, by one evaluator
    for every store kind, so every source gives the same runs."""
    runs = source.iter_runs(experiment, selection)
    if selection.deleted_only:
        runs = (r for r in runs if isinstance(r, Unreadable) or r.lifecycle_stage == DELETED)
    if selection.created_after is not None or selection.created_before is not None:
        runs = (r for r in runs if isinstance(r, Unreadable) or created_within(r, selection.created_after, selection.created_before))
    if selection.changed_since is not None:
        runs = changed_since(source, runs, selection.changed_since)
    if selection.filter:
        runs = filter_runs(source, runs, selection.filter)
    return runs


def created_within(run: Run, after: int | None, before: int | None) -> bool:
    """Whether the run was created (started) within the inclusive bounds; a run with no
    start time is within none."""
    if after is None and before is None:
        return True
    start = run.start_time
    return start is not None and (after is None or start >= after) and (before is None or start <= before)


def changed_since(source: SourceStore, runs: Iterable[Run | Unreadable], since: int) -> Iterator[Run | Unreadable]:
    """The runs started or changed at or after `since` (epoch ms), in the order given:
    start, end or deleted time at or after it, or else any metric's latest point (MLflow's
    latest: the greatest step, then timestamp) logged at or after it, read a batch at a time
    with metric_summaries(whole_history=False), which every source answers cheaply. MLflow
    keeps no last-update time: a tag or param edit, an artifact upload or a restore moves no
    timestamp and is not seen. A deleted run of unknown deletion time is taken. An unreadable
    run is passed on (counted where it is met)."""
    listing = iter(runs)
    while batch := list(islice(listing, SUMMARY_BATCH)):
        undecided = [r for r in batch if isinstance(r, Run) and not _moved_since(r, since)]
        summaries = metric_summaries(source, undecided, None, whole_history=False)
        late = {
            run_id for run_id, metrics in summaries.items()
            if any(m.timestamp is not None and m.timestamp >= since for m in metrics.values())
        }
        undecided_ids = {r.run_id for r in undecided}
        yield from (r for r in batch if isinstance(r, Unreadable) or r.run_id not in undecided_ids or r.run_id in late)


def _moved_since(run: Run, since: int) -> bool:
    """A time of the run's at or after since; a deleted run whose deletion time the source
    does not give (a tracking server's API has none) is taken: it may have been deleted since."""
    if run.lifecycle_stage == DELETED and run.deleted_time is None:
        return True
    return any(t is not None and t >= since for t in (run.start_time, run.end_time, run.deleted_time))


def _id(experiment: Experiment | Unreadable) -> str:
    return experiment.source_id if isinstance(experiment, Unreadable) else experiment.experiment_id


def takes_registry(selection: Selection) -> bool:
    """Whether the selection takes units of the whole workspace (the model registry): when
    it names models, or when nothing narrows it to some experiments or runs."""
    return bool(selection.models) or selection.models_only or not (selection.experiments or selection.narrows_runs)


def select_workspace_units(kind: UnitKind, units: Iterable[Unit | Unreadable], selection: Selection) -> Iterator[Unit | Unreadable]:
    """The units of a workspace kind the selection takes: with --model, the registered
    models (prompts too) whose names match and their versions, and nothing of other kinds."""
    if not selection.models:
        yield from units
        return
    if kind.name not in (REGISTERED_MODEL.name, MODEL_VERSION.name):
        return
    for unit in units:
        unit_id = unit.source_id if isinstance(unit, Unreadable) else unit.unit_id
        try:
            name = split_version_id(unit_id)[0] if kind.name == MODEL_VERSION.name else unit_id
        except ValueError:  # an unreadable version whose id names no version
            name = unit_id
        if name_matches(name, selection.models):
            yield unit
