"""The units of one experiment (or of the whole workspace) on the worker pool, each after
the units it depends on.

Kinds are moved one after another in dependency order (runs, then the kinds that refer to
runs); inside a kind, a unit that depends on another unit of the same kind (a child run on
its parent) waits until that one is settled. The rule for dependencies is one, for every
kind and every sink:

- a unit whose dependency failed in this transfer (damaged, unreadable, refused by the
  target, or failed itself because of its own dependency) fails too, with the reason, and
  is retried with it next time;
- a unit whose dependency is not part of the transfer (not selected, or not in the
  source's selection at all) is moved with the reference resolved against the target: the
  copy the target holds, else the source id, recorded as a loss.

At most twice as many units as workers are read ahead, so memory stays flat however many
units an experiment holds (units waiting for a dependency are held too). What is settled is
remembered only for the kinds some kind depends on (runs, logged models, ...): a million
traces, on which nothing depends, leave nothing behind.
"""
from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any

from trackport.domain import Experiment, TargetExperimentId
from trackport.stores.base import NotSelected, Unreadable
from trackport import kinds
from trackport.transfer.plan import DELETED_REASON
from trackport.transfer.units import Key, UnitType

if TYPE_CHECKING:
    from trackport.transfer.engine import _Transfer


class ExperimentUnits:
    """experiment and target None: the workspace's units, after every experiment; their
    dependencies are found through the experiments they name (Unit.refs)."""

    def __init__(self, transfer: _Transfer, experiment: Experiment | None, target: TargetExperimentId | None) -> None:
        self.t = transfer
        self.experiment = experiment
        self.target = target
        self.depended_on = kinds.depended_on()  # the kinds remembered below
        self.settled: dict[Key, bool] = {}  # unit -> moved (done or skipped), or failed
        self.outside: set[Key] = set()  # listed but left out (the units depending on them go on)
        self.moved: dict[Key, str] = {}  # unit -> its target id, this experiment
        self.in_flight: dict[Future, tuple[UnitType, Any]] = {}
        self.waiting_for: dict[Key, list[tuple[UnitType, Any]]] = {}

    def move(self, unit_type: UnitType, listing) -> str | None:
        """Every unit of one kind in the listing; the reason the listing broke off, if it did."""
        problem = None
        try:
            try:
                for item in listing:
                    self._take(unit_type, item)
                    while len(self.in_flight) >= 2 * self.t.config.workers:
                        self._settle_some()
            except Exception as exc:  # noqa: BLE001 - the listing broke off: recorded below
                where = ("experiment", self.experiment.experiment_id) if self.experiment else (unit_type.kind.name, "")
                problem = f"its {unit_type.kind.plural} could not all be listed: {self.t.unit_failure(exc, *where)}"
            while self.in_flight or self.waiting_for:
                if self.in_flight:
                    self._settle_some()
                    continue
                # Dependencies that never came. With the whole listing read, they are not
                # in the selection: the units waiting for them go on. Otherwise they may
                # just not have been reached: those units fail with them.
                for dependency, waiting in list(self.waiting_for.items()):
                    del self.waiting_for[dependency]
                    self.outside.add(dependency)
                    for unit_type_, unit in waiting:
                        if problem:
                            self._fail_family(unit_type_, unit, f"its {unit_type_.dependency_name(dependency)} was not reached: {problem}")
                        else:
                            self._release(unit_type_, unit)
        except BaseException:
            for future in self.in_flight:
                future.cancel()
            raise
        return problem

    # -- scheduling (main thread) -------------------------------------------------------

    def _take(self, unit_type: UnitType, item: Any) -> None:
        if isinstance(item, Unreadable):
            self.t.record_unreadable(item)
            self._settle((item.kind, item.source_id), False)
            return
        if isinstance(item, NotSelected):  # left out by the listing itself (a trace --trace-filter does not match)
            self._leave_out((item.kind, item.source_id), item.name, item.reason)
            return
        key = (unit_type.kind.name, unit_type.source_id(item))
        if unit_type.deleted(item) and not self.t.selection.include_deleted:
            self._leave_out(key, unit_type.name(item), DELETED_REASON)
            return
        self._release(unit_type, item)

    def _leave_out(self, key: Key, name: str, reason: str) -> None:
        self.t.record_not_selected(key[0], key[1], name, reason)
        if key[0] in self.depended_on:
            self.outside.add(key)
        for waiting in self.waiting_for.pop(key, []):
            self._release(*waiting)

    def _release(self, unit_type: UnitType, unit: Any) -> None:
        """Submit the unit, fail it (and the units waiting for it) if a dependency failed,
        or hold it until a dependency of its own kind that may still come is settled."""
        for dependency in unit_type.dependencies(unit):
            if self.settled.get(dependency) is False or dependency in self.t.failed:
                self._fail_family(unit_type, unit, f"its {unit_type.dependency_name(dependency)} failed")
                return
            if (
                dependency[0] == unit_type.kind.name
                and dependency not in self.settled
                and dependency not in self.outside
                and self._in_target(unit_type, unit, dependency) is None
            ):
                self.waiting_for.setdefault(dependency, []).append((unit_type, unit))
                return
        self.in_flight[self.t.pool.submit(self._move, unit_type, unit)] = (unit_type, unit)

    def _fail_family(self, unit_type: UnitType, unit: Any, reason: str) -> None:
        pending = [(unit_type, unit, reason)]
        while pending:
            type_, one, why = pending.pop()
            key = (type_.kind.name, type_.source_id(one))
            self.t.record_failure(key[0], key[1], type_.name(one), why)
            self.settled[key] = False
            pending.extend((t, u, f"its {t.dependency_name(key)} failed") for t, u in self.waiting_for.pop(key, []))

    def _settle_some(self) -> None:
        for future in wait(self.in_flight, return_when=FIRST_COMPLETED).done:
            unit_type, unit = self.in_flight.pop(future)
            self._settle((unit_type.kind.name, unit_type.source_id(unit)), future.result())  # re-raises fatal errors

    def _settle(self, key: Key, moved: bool) -> None:
        if key[0] in self.depended_on:
            self.settled[key] = moved
        for waiting in self.waiting_for.pop(key, []):
            self._release(*waiting)

    def _in_target(self, unit_type: UnitType, unit: Any, key: Key) -> str | None:
        """The target's copy of a dependency of unit (asked of the target, in the target
        experiment the dependency lives in), or None."""
        if key[0] == "experiment":  # a workspace unit's: the experiment written for it
            return self.t.idmap.get("experiment", key[1])
        target = self.target
        if self.experiment is None:
            home = unit_type.home_experiment(unit)
            target = self.t.idmap.get("experiment", home) if home else None
            if target is None and kinds.kind(key[0]).scope == "experiment":
                return None  # a run or logged model is found in its experiment's copy
        try:
            return self.t.unit_type(key[0]).lookup(self.t.sink, key[1], target)
        except Exception as exc:  # noqa: BLE001 - not found for now: asked again later
            self.t.unit_failure(exc, key[0], key[1])  # fatal and internal errors still stop
            return None

    # -- one unit (worker thread) ---------------------------------------------------------

    def _move(self, unit_type: UnitType, unit: Any) -> bool:
        """One unit. False when it failed (already recorded)."""
        kind, source_id, name = unit_type.kind.name, unit_type.source_id(unit), unit_type.name(unit)
        try:
            targets = {d: self.moved.get(d) or self._in_target(unit_type, unit, d) for d in unit_type.dependencies(unit)}
            moved = unit_type.move(self.t.source, self.t.sink, unit, self.target, targets)
        except Exception as exc:  # noqa: BLE001 - recorded, reported, counted (or re-raised)
            self.t.record_failure(kind, source_id, name, self.t.unit_failure(exc, kind, source_id))
            return False
        if kind in self.depended_on:
            self.moved[(kind, source_id)] = moved.target_id
        self.t.record_moved(kind, source_id, name, moved)
        return True
