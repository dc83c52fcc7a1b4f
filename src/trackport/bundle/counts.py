"""The counts a finished bundle's root descriptor records, taken from the bundle itself:
the engine's counts cover one session only, a resumed export's bundle all of them."""
from __future__ import annotations

import json
import os
from pathlib import Path

from trackport import kinds
from trackport._files import is_temp_name
from trackport.bundle import descriptor
from trackport.bundle.layout import EXPERIMENT_FILE, EXPERIMENTS_DIR, RUN_FILE, RUNS_DIR, UNITS_DIR, unit_id_of


def count_bundle(path: Path) -> dict:
    """Experiments, runs, metric points, artifact files and bytes, and each generic kind's
    units (by its plural), as the bundle at path holds them."""
    c = dict.fromkeys(descriptor.COUNT_KEYS, 0)
    exp_root = path / EXPERIMENTS_DIR
    for e in sorted(exp_root.iterdir()) if exp_root.is_dir() else ():
        if not (e / EXPERIMENT_FILE).is_file():
            continue
        c["experiments"] += 1
        rd = e / RUNS_DIR
        for r in rd.iterdir() if rd.is_dir() else ():
            if is_temp_name(r.name) or not (r / RUN_FILE).is_file():
                continue
            with open(r / RUN_FILE, encoding="utf-8") as f:
                doc = json.load(f)
            c["runs"] += 1
            c["metric_points"] += (doc.get("metrics") or {}).get("points", 0)
            arts = doc.get("artifacts") or []
            c["artifact_files"] += len(arts)
            c["artifact_bytes"] += sum(a.get("size", 0) for a in arts)
        _count_units(e / UNITS_DIR, c)
    _count_units(path / UNITS_DIR, c)  # the workspace's
    return c


def _count_units(units_dir: Path, counts: dict) -> None:
    """The unit documents in one units/ folder, added to counts under each kind's plural;
    the files of units of kinds with files to the artifact counts."""
    for k in sorted(units_dir.iterdir()) if units_dir.is_dir() else ():
        if k.name in kinds.BUILT_IN or not k.is_dir() or is_temp_name(k.name):
            continue
        kind = kinds.kind(k.name)
        counts.setdefault(kind.plural, 0)
        with os.scandir(k) as entries:  # streamed: there may be millions (traces)
            for document in (e.path for e in entries if unit_id_of(e.name) is not None):
                counts[kind.plural] += 1
                if kind.has_files:
                    with open(document, encoding="utf-8") as f:
                        files = json.load(f).get("files") or []
                    counts["artifact_files"] += len(files)
                    counts["artifact_bytes"] += sum(x.get("size", 0) for x in files)
