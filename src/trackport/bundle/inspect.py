"""What a bundle holds, for `trackport bundle inspect`: its descriptor and its experiments."""
from __future__ import annotations

from pathlib import Path

from trackport.bundle.layout import ROOT_FILE
from trackport.bundle.reader import BundleSource
from trackport.stores.base import Selection, Unreadable


def is_bundle(path: Path) -> bool:
    """A directory with a root descriptor, complete or still being written."""
    return (path / ROOT_FILE).is_file()


def inspect_bundle(path: Path) -> dict:
    """The root descriptor plus, per experiment, its id, name, state and run count."""
    source = BundleSource(path)
    everything = Selection(include_deleted=True)
    experiments = []
    for experiment in source.list_experiments(everything):
        if isinstance(experiment, Unreadable):
            experiments.append({"experiment_id": experiment.source_id, "name": None, "unreadable": experiment.reason})
            continue
        experiments.append(
            {
                "experiment_id": experiment.experiment_id,
                "name": experiment.name,
                "lifecycle_stage": experiment.lifecycle_stage,
                "runs": sum(1 for _ in source.iter_runs(experiment, everything)),
            }
        )
    return {**source.root, "experiments": experiments}
