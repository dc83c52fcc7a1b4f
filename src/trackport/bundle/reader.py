"""BundleSource: reads a complete bundle (format 1.x) as a SourceStore.

A bundle may be damaged or hostile, so the reader trusts nothing it has not checked
(docs/bundle-format.md, "Reading untrusted bundles"):

* on opening, the root descriptor and every manifest.jsonl line are checked (bundle/index.py)
  and the descriptor's bytes against its manifest entry: any damage there is fatal
  (BadInputError), before anything is written;
* the units are the experiment.json, run.json and unit documents the manifest lists; files
  it does not list are not read;
* a unit is checked (bundle/validator.py, the code verify runs too) before it is handed to
  the engine: a run's run.json, and the size of every file it names against the manifest,
  which must agree with run.json's own records; no path may pass through a symbolic link;
* the Parquet file is hashed before its first batch, and checked (types, run id, row
  count) while streaming; an artifact stream is hashed as it is read and raises before
  its last bytes are returned when they do not match (bundle/checked_stream.py).

Damage to a unit costs that unit (UnitError naming the file, or an Unreadable in place of
the unit).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO, ContextManager, Iterator

import pyarrow as pa

from trackport._files import CHUNK_SIZE, check_component, check_relpath, sha256_stream
from trackport.config import DEFAULT
from trackport.domain import ArtifactFile, Experiment, Run
from trackport.errors import BadInputError, UnitError
from trackport.kinds import TRACE, Unit, UnitKind
from trackport.stores.base import Selection, SourceStore, StoreDescription, Unreadable
from trackport.selection import resolve_experiments, run_order, select_runs
from trackport.bundle import chain, descriptor, spans, validator
from trackport.bundle.checked_stream import CheckedArtifact
from trackport.bundle.documents import short
from trackport.bundle.index import BundleIndex, Problem, read_index
from trackport.bundle.location import BundleFiles
from trackport.bundle.layout import MANIFEST_FILE, unit_id_from_name
from trackport.bundle.unit_order import sorted_names
from trackport.bundle.validator import Refused, RunPlan, UnitPlan



class BundleSource(SourceStore):
    takes_deleted_by_default = True  # a bundle holds what its export selected

    def __init__(self, path: str | os.PathLike, *, checked_runs: int = DEFAULT.bundle_checked_runs,
                 files: BundleFiles | None = None, place=None):
        """path: the bundle's directory (for a bundle on S3, the local copy of its root
        descriptor and manifest; files then reads the rest from the bucket, and place is
        where the earlier links of its chain lie: chain.earlier_links)."""
        self.path = Path(path).absolute()
        self._checked_runs = checked_runs
        if not self.path.exists():
            raise BadInputError(f"{self.path} does not exist")
        if not self.path.is_dir():
            raise BadInputError(f"{self.path} is not a directory, so not a trackport bundle")
        self.root = descriptor.load_root(self.path)
        if not (self.path / MANIFEST_FILE).is_file():
            raise BadInputError(
                f"{self.path} is incomplete (no {MANIFEST_FILE}): the export did not finish; re-run the export"
            )
        self._index: BundleIndex = read_index(self.path, self.root.get("bundle_id"), files)
        problems = self._index.problems or validator.check_root_entry(self._index)
        if problems:  # the manifest or the descriptor is damaged: nothing can be trusted
            raise BadInputError(self._message(problems[0]))
        # An increment (format 1.4): the earlier links of its chain, each checked now, so
        # that a missing or damaged one stops an import before anything is written.
        self.links = chain.earlier_links(self.path, self.root, place=place)
        self._links = chain.by_id(self.links)
        self._plans: OrderedDict[tuple[str, str], RunPlan] = OrderedDict()
        self._plans_lock = threading.Lock()
        # Checked documents of units of kinds with files (logged models), for the workers that
        # write them; only those: a trace's plan holds its spans.
        self._unit_plans: dict[tuple[str | None, str, str], UnitPlan] = {}

    def _message(self, problem: Problem) -> str:
        return problem.in_bundle(self.path)

    def describe(self) -> StoreDescription:
        mlflow_version = self.root["source"].get("mlflow_version")
        return StoreDescription(kind="bundle", uri=str(self.path), mlflow_version=mlflow_version)

    def source_description(self) -> StoreDescription:
        """The store the bundle was exported from."""
        s = self.root["source"]
        return StoreDescription(kind=s["kind"], uri=s["uri"], mlflow_version=s.get("mlflow_version"))

    # -- checked runs ------------------------------------------------------------------
    def _plan(self, run: Run) -> RunPlan:
        """The checked plan of a run handed out by iter_runs (for the worker threads)."""
        try:
            check_component(run.experiment_id, "experiment id")
            check_component(run.run_id, "run id")
        except ValueError as e:
            raise UnitError(str(e)) from None
        return self._checked_run(run.experiment_id, run.run_id)

    def _checked_run(self, experiment_id: str, run_id: str) -> RunPlan:
        """validator.check_run, remembered for the last `checked_runs` runs: a transfer
        asks for each run up to three times (is there a run at all, the sorted listing,
        the worker). UnitError on its first problem."""
        key = (experiment_id, run_id)
        with self._plans_lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan, problems = validator.check_run(self._index, experiment_id, run_id, self._links)
        if problems or plan is None:
            raise UnitError(self._message(problems[0]))
        with self._plans_lock:
            self._plans[key] = plan
            while len(self._plans) > self._checked_runs:
                self._plans.popitem(last=False)
        return plan

    # -- experiments -------------------------------------------------------------------
    def list_experiments(self, selection: Selection) -> Iterator[Experiment | Unreadable]:
        """The selected experiments (trackport.selection), an Unreadable for each invalid
        experiment.json. The experiments are those the manifest lists (an
        experiment.json, a run directory or a unit document). An unreadable one can be
        named only by its id: its name is in the damaged file."""
        names = sorted(self._index.experiments, key=lambda s: (len(s), s))
        valid: dict[str, Experiment] = {}
        bad: dict[str, Unreadable] = {}
        for name in names:
            exp, problems = validator.check_experiment(self._index, name)
            if exp is None:
                bad[name] = Unreadable("experiment", name, self._message(problems[0]))
            else:
                valid[name] = exp
        return iter(resolve_experiments(selection, [*valid.values(), *bad.values()], self._locate_runs, f"bundle {self.path}"))

    def _locate_runs(self, run_ids: list[str]) -> dict[str, str]:
        wanted = set(run_ids)
        return {run: exp for exp, runs in self._index.runs.items() for run in runs if run in wanted}

    # -- runs --------------------------------------------------------------------------
    def count_runs(self, experiment: Experiment, selection: Selection) -> int | None:
        if not selection.include_deleted:
            return None  # their state is inside each run.json
        names = self._index.runs.get(experiment.experiment_id, {})
        return sum(1 for n in names if not selection.run_ids or n in selection.run_ids)

    def iter_runs(self, experiment: Experiment, selection: Selection) -> Iterator[Run | Unreadable]:
        """In trackport.selection.run_order, then an Unreadable for each run whose run.json
        or files are damaged (checked here, so a damaged run is refused before anything
        of it is written)."""
        wanted = set(selection.run_ids)
        runs: list[Run] = []
        bad: list[Unreadable] = []
        for name in sorted(self._index.runs.get(experiment.experiment_id, {})):
            if wanted and name not in wanted:
                continue
            try:
                run = self._checked_run(experiment.experiment_id, name).run
            except UnitError as e:
                bad.append(Unreadable("run", name, str(e)))
                continue
            runs.append(run)
        yield from select_runs(sorted(runs, key=run_order), selection)
        yield from bad

    def iter_metric_batches(self, run: Run) -> Iterator[pa.RecordBatch]:
        plan = self._plan(run)
        with ExitStack() as held:
            opened = []
            for part in plan.metrics or ():  # every part hashed before the first batch
                try:
                    f = held.enter_context(part.index.files.open(part.rel))
                    actual = sha256_stream(f)[0]
                    f.seek(0)
                except OSError as e:
                    raise UnitError(f"{part.where}: cannot be read: {e.strerror or e}") from None
                if actual != part.sha256:
                    raise UnitError(f"{part.where}: {validator.SHA256_DIFFERS}")
                opened.append(f)
            try:
                yield from validator.metric_batches(plan, opened)
            except Refused as e:
                raise UnitError(self._message(e.problem)) from None

    def run_plan(self, run_id: str) -> RunPlan | None:
        """The checked plan of a run the bundle holds (in whichever experiment), None when
        it holds none; UnitError when it is damaged (an increment refers to it)."""
        homes = self._index.run_homes.get(run_id) or []
        return self._checked_run(homes[0], run_id) if len(homes) == 1 else None

    def check_run(self, run: Run) -> None:
        """Every point decoded and every artifact byte hashed, before a sink that cannot
        take a run back writes any of it (the reads that follow check it all again)."""
        for _ in self.iter_metric_batches(run):
            pass
        for artifact in self.list_artifacts(run):
            with self.open_artifact(run, artifact.path) as stream:
                while stream.read(CHUNK_SIZE):
                    pass

    def list_artifacts(self, run: Run) -> Iterator[ArtifactFile]:
        plan = self._plan(run)
        return iter([ArtifactFile(path=p, size=stored.size) for p, stored in sorted(plan.artifacts.items())])

    def open_artifact(self, run: Run, path: str) -> ContextManager[BinaryIO]:
        try:
            check_relpath(path)
        except ValueError as e:
            raise UnitError(f"run {run.run_id}: artifact {short(str(e))}") from None
        plan = self._plan(run)
        listed = plan.artifacts.get(path)
        if listed is None:
            raise UnitError(f"run {run.run_id}: artifact {path!r} is not listed in {self._index.files.where(plan.run_json)}")
        return self._open_checked(listed.index, listed.rel, listed.size, listed.sha256)

    def _open_checked(self, index: BundleIndex, rel: str, size: int, sha256: str) -> ContextManager[BinaryIO]:
        """A listed file, opened without following a link, hashed as it is read."""
        where = index.files.where(rel)
        try:
            f = index.files.open(rel)
        except OSError as e:
            raise UnitError(f"{where} cannot be opened: {e.strerror or e}") from None
        return CheckedArtifact(f, where, size, sha256)  # type: ignore[return-value]

    # -- units of generic kinds ----------------------------------------------------------
    def unit_kinds(self) -> list[str]:
        """The names of the generic unit kinds the bundle holds documents of, known to
        this trackport or not (the caller decides what it moves)."""
        return self._index.unit_kinds()

    def iter_units(self, kind: UnitKind, experiment: Experiment | None) -> Iterator[Unit | Unreadable]:
        """The experiment's units of that kind (the workspace's when experiment is None),
        by unit id (numbers in ids by value: a model's version 9 before 10); an Unreadable
        in place of each one whose document or files are damaged. The body is checked
        against kind.schema, when the kind has one."""
        experiment_id = None if experiment is None else experiment.experiment_id
        names = self._index.units.get(experiment_id, {}).get(kind.name, {})
        checked = ((n, *validator.check_unit(self._index, experiment_id, kind.name, n, kind.schema))
                   for n in sorted_names(names))  # names only (~110 bytes a unit while sorting)
        if kind.name == TRACE.name and experiment_id is not None:  # spans in the experiment's Parquet file (1.5)
            checked = spans.attach(self._index, experiment_id, checked, kind.schema)
        for name, plan, problems in checked:
            if plan is None or problems:
                yield Unreadable(kind.name, unit_id_from_name(name), self._message(problems[0]))
                continue
            if kind.has_files:
                with self._plans_lock:
                    self._unit_plans[(plan.unit.experiment_id, plan.unit.kind, plan.unit.unit_id)] = plan
            yield plan.unit

    def _unit_plan(self, unit: Unit) -> UnitPlan:
        with self._plans_lock:
            plan = self._unit_plans.get((unit.experiment_id, unit.kind, unit.unit_id))
        if plan is None:
            raise UnitError(f"{unit.kind} {unit.unit_id!r} was not read from {self.path}")
        return plan

    def list_unit_artifacts(self, unit: Unit) -> Iterator[ArtifactFile]:
        plan = self._unit_plan(unit)
        return iter([ArtifactFile(path=p, size=size) for p, (_, size, _) in sorted(plan.files.items())])

    def open_unit_artifact(self, unit: Unit, path: str) -> ContextManager[BinaryIO]:
        listed = self._unit_plan(unit).files.get(path)
        if listed is None:
            raise UnitError(f"{unit.kind} {unit.unit_id}: file {short(path)!r} is not named by its document")
        rel, size, sha256 = listed
        return self._open_checked(self._index, rel, size, sha256)

    def check_unit(self, unit: Unit) -> None:
        """Every byte of the unit's files hashed, before a sink that cannot take a unit back
        writes any of it."""
        for artifact in self.list_unit_artifacts(unit):
            with self.open_unit_artifact(unit, artifact.path) as stream:
                while stream.read(CHUNK_SIZE):
                    pass
