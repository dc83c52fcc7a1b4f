"""What a bundle holds, for `trackport bundle inspect`: its descriptor and its experiments."""
from __future__ import annotations

from pathlib import Path

from trackport import kinds
from trackport.domain import DELETED
from trackport.bundle.layout import ROOT_FILE
from trackport.bundle.reader import BundleSource
from trackport.stores.base import Selection, Unreadable


def is_bundle(path: Path) -> bool:
    """A directory with a root descriptor, complete or still being written."""
    return (path / ROOT_FILE).is_file()


def inspect_bundle(path: Path | BundleSource) -> dict:
    """The root descriptor (its selection, producer and counts also under their own keys),
    plus, per experiment, its id, name, state and run count; how many experiments and runs
    are deleted; and counts of every unit kind the bundle holds, by the kind's plural.

    Every document is read and checked as an import reads it: a damaged experiment is
    listed with the reason it is unreadable."""
    source = path if isinstance(path, BundleSource) else BundleSource(path)
    everything = Selection(include_deleted=True)
    experiments = []
    deleted = {"experiments": 0, "runs": 0}
    units = dict.fromkeys((kinds.kind(name).plural for name in source.unit_kinds()), 0)
    for experiment in source.list_experiments(everything):
        if isinstance(experiment, Unreadable):
            experiments.append({"experiment_id": experiment.source_id, "name": None, "unreadable": experiment.reason})
            continue
        runs = list(source.iter_runs(experiment, everything))
        if experiment.lifecycle_stage == DELETED:
            deleted["experiments"] += 1
        deleted["runs"] += sum(1 for run in runs if not isinstance(run, Unreadable) and run.lifecycle_stage == DELETED)
        for name in source.unit_kinds():
            kind = kinds.kind(name)
            units[kind.plural] += sum(1 for _ in source.iter_units(kind, experiment))
        experiments.append(
            {
                "experiment_id": experiment.experiment_id,
                "name": experiment.name,
                "lifecycle_stage": experiment.lifecycle_stage,
                "runs": len(runs),
            }
        )
    # The descriptor's counts are the writer's; a kind it did not count (a bundle of an
    # older trackport, edited since) is counted here.
    counts = dict(source.root.get("counts") or {})
    for plural, n in units.items():
        counts.setdefault(plural, n)
    return {
        **source.root,
        "selection": source.root["selection"],
        "producer": source.root["producer"],
        "deleted": deleted,
        "counts": counts,
        "experiments": experiments,
    }
