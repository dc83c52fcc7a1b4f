"""The source contract for selections: the same options give the same experiments and
runs, in the same order, from every source kind (a tracking server, a local sqlite store,
a server's database read directly, an mlruns folder, a bundle), all holding the sample.

Experiments are compared by name and runs by name: a server gives them ids of its own.
"""
from __future__ import annotations

import pytest

from trackport.errors import BadInputError
from trackport.opening import open_source
from trackport.samples import sample_store
from trackport.selection import runs_of
from trackport.stores.base import Selection, Unreadable
from trackport.stores.mlflow_db.sqlite import SqliteSource

KINDS = ["rest", "sqlite", "database", "mlruns", "bundle"]


@pytest.fixture(scope="module")
def sources(source_server, sample_sqlite, sample_mlruns, sample_bundle):
    from trackport.stores.sqlite.files import sqlite_path_from_uri

    opened = {
        "rest": open_source(source_server.url),
        "sqlite": open_source(sample_sqlite),
        "database": SqliteSource(sample_sqlite, sqlite_path_from_uri(sample_sqlite)),
        "mlruns": open_source(sample_mlruns),
        "bundle": open_source(str(sample_bundle)),
    }
    yield opened
    for source in opened.values():
        source.close()


def _listing(source, selection: Selection) -> list[tuple[str, list[str]]]:
    """(experiment name, [run names]) in the order the source gives them."""
    listed = []
    for experiment in source.list_experiments(selection):
        assert not isinstance(experiment, Unreadable), experiment
        runs = [run.run_name for run in runs_of(source, experiment, selection)]
        listed.append((experiment.name, runs))
    return listed


def _run_ids(source, names: set[str]) -> tuple[str, ...]:
    everything = Selection(include_deleted=True)
    return tuple(
        run.run_id
        for experiment in source.list_experiments(everything)
        for run in source.iter_runs(experiment, everything)
        if run.run_name in names
    )


SELECTIONS = {
    "all": lambda ids: Selection(),
    "with deleted": lambda ids: Selection(include_deleted=True),
    "one experiment by name": lambda ids: Selection(experiments=(sample_store.EXPERIMENT_B,), include_deleted=True),
    "name: form": lambda ids: Selection(experiments=(f"name:{sample_store.EXPERIMENT_A}",)),
    "run ids": lambda ids: Selection(run_ids=ids({"child", "killed run"})),
    "run ids and an experiment": lambda ids: Selection(experiments=(sample_store.EXPERIMENT_A,), run_ids=ids({"child", "killed run"})),
    # --since: started, ended or deleted at or after it, or a metric's latest point logged then.
    "changed since": lambda ids: Selection(changed_since=sample_store.BASE_TIME + 25_000, include_deleted=True),
}


@pytest.mark.parametrize("name", SELECTIONS)
def test_every_source_selects_the_same_units_in_the_same_order(sources, name):
    listings = {
        kind: _listing(source, SELECTIONS[name](lambda names, s=source: _run_ids(s, names)))
        for kind, source in sources.items()
    }
    assert listings["sqlite"], "the sample selection is empty"
    for kind in KINDS:
        assert listings[kind] == listings["sqlite"], kind


def test_run_ids_take_only_the_experiments_that_hold_them(sources):
    for kind, source in sources.items():
        ids = _run_ids(source, {"killed run"})
        assert [name for name, _ in _listing(source, Selection(run_ids=ids))] == [sample_store.EXPERIMENT_B], kind


def test_every_source_refuses_what_it_does_not_hold_the_same_way(sources):
    unknown = "0123456789abcdef0123456789abcdef"
    for kind, source in sources.items():
        with pytest.raises(BadInputError, match=f"run\\(s\\) not found in .*{unknown}"):
            list(source.list_experiments(Selection(run_ids=(unknown,))))
        with pytest.raises(BadInputError, match="no experiment named or with id 'no such experiment'"):
            list(source.list_experiments(Selection(experiments=("no such experiment",))))


def test_a_filter_gives_the_same_runs_on_every_source(sources):
    """--filter, --status deleted and --created-* select the same runs from every source kind
    (trackport/search; tests/test_filters.py tries the whole language)."""
    selections = {
        "filter": Selection(filter="attributes.status = 'KILLED'", include_deleted=True),
        "deleted only": Selection(include_deleted=True, deleted_only=True),
        "created before": Selection(include_deleted=True, created_before=sample_store.BASE_TIME + 1_000),
    }
    for name, selection in selections.items():
        listings = {kind: _listing(source, selection) for kind, source in sources.items()}
        assert any(runs for _, runs in listings["sqlite"]), name
        for kind in KINDS:
            assert listings[kind] == listings["sqlite"], (name, kind)
    assert [run for _, runs in _listing(sources["bundle"], selections["filter"]) for run in runs] == ["killed run"]


def test_a_run_count_is_what_the_listing_gives(sources):
    """count_runs (progress totals) is either unknown or exactly the listing's length."""
    counted = set()
    for kind, source in sources.items():
        for selection in (Selection(include_deleted=True), Selection(run_ids=_run_ids(source, {"child"}), include_deleted=True)):
            for experiment in source.list_experiments(Selection(include_deleted=True)):
                n = source.count_runs(experiment, selection)
                if n is not None:
                    counted.add(kind)
                    assert n == len(list(source.iter_runs(experiment, selection))), (kind, experiment.name)
    assert counted == {"sqlite", "database", "mlruns", "bundle"}
