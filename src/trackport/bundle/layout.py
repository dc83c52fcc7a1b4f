"""Where things live in a bundle and what they are called.

Everything path-shaped about bundle format v1 is here: file names, the format name and
version, the directories of experiments, runs and unit documents, and the atomic "temp
name, then os.replace" JSON writer the other modules share. The file-safety helpers
themselves (atomic writes, hashes, path checks) are trackport._files.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import quote, unquote
from typing import Any, Iterator

from trackport._files import check_component, write_bytes_atomic
from trackport.bundle.documents import dumps

FORMAT_NAME = "trackport-bundle"
FORMAT_VERSION = "1.6"
FORMAT_MAJOR = 1

ROOT_FILE = "trackport-bundle.json"
MANIFEST_FILE = "manifest.jsonl"
EXPERIMENTS_DIR = "experiments"
TRANSFER_DIR = "transfer"
EXPERIMENT_FILE = "experiment.json"
RUNS_DIR = "runs"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.parquet"
SPANS_FILE = "spans.parquet"  # experiments/<E>/spans.parquet: its traces' spans (1.5; bundle/spans.py)
ARTIFACTS_DIR = "artifacts"
# experiments/<E>/units/<kind name>/<unit file name>.json, and units/<kind name>/<unit file
# name>.json for the kinds of the whole workspace (format 1.2); the files of a unit of a kind
# with files (a logged model's artifacts) in the folder <unit file name>/ beside it (1.3).
UNITS_DIR = "units"
UNIT_SUFFIX = ".json"
# A unit id as a file name (format 1.3): characters outside these percent-encoded (a model
# version's id "churn/3" is "churn%2F3"), and a name longer than MAX_UNIT_NAME bytes cut and
# ended with "~" and a hash of the id; the document inside names the id itself.
_UNIT_NAME_SAFE = " !'()+,-=@_"
MAX_UNIT_NAME = 200
# The writer's lock (trackport.locking): changes with every writer, so never listed.
UNLISTED = frozenset({f"{TRANSFER_DIR}/lock"})


_VERSION = re.compile(r"^(\d+)\.(\d+)$")


def parse_version(text: object) -> tuple[int, int] | None:
    """'1.0' -> (1, 0); anything that is not "<major>.<minor>" -> None."""
    if not isinstance(text, str):
        return None
    m = _VERSION.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def is_component(name: str) -> bool:
    """Whether name can be an id used as one directory or file name (check_component)."""
    try:
        check_component(name, "")
    except ValueError:
        return False
    return True


def experiment_dir(root: Path, experiment_id: str) -> Path:
    return root / EXPERIMENTS_DIR / check_component(experiment_id, "experiment id")


def runs_dir(root: Path, experiment_id: str) -> Path:
    return experiment_dir(root, experiment_id) / RUNS_DIR


def run_dir(root: Path, experiment_id: str, run_id: str) -> Path:
    return runs_dir(root, experiment_id) / check_component(run_id, "run id")


def unit_name(unit_id: str) -> str:
    """The file name (without .json) a unit's document and folder have: its id with every
    character but letters, digits, '.' and a few more percent-encoded (a leading '.' too),
    cut with a hash when long. ValueError for an empty id."""
    if not isinstance(unit_id, str) or not unit_id:
        raise ValueError(f"unit id {unit_id!r} is empty")
    name = quote(unit_id, safe=_UNIT_NAME_SAFE)
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name.encode()) > MAX_UNIT_NAME:
        digest = hashlib.sha256(unit_id.encode()).hexdigest()[:16]
        cut = name[: MAX_UNIT_NAME - 17]
        escape = cut.rfind("%", len(cut) - 2)  # not inside a %XX
        name = (cut[:escape] if escape >= 0 else cut) + "~" + digest
    return name


def unit_file(root: Path, experiment_id: str | None, kind: str, unit_id: str) -> Path:
    """experiments/<E>/units/<kind>/<unit_name(id)>.json, or units/<kind>/... for a unit of
    the workspace (experiment_id None); ValueError when an id or the kind name cannot be
    one."""
    base = root if experiment_id is None else experiment_dir(root, experiment_id)
    folder = base / UNITS_DIR / check_component(kind, "unit kind")
    return folder / (unit_name(unit_id) + UNIT_SUFFIX)


def unit_files_dir(document: Path) -> Path:
    """The folder of a unit's files, beside its document: <name>/ for <name>.json."""
    return document.with_name(document.name[: -len(UNIT_SUFFIX)])


def unit_id_of(file_name: str) -> str | None:
    """The file name (unit_name) a document's name in a kind's folder stands for; None for
    anything else (a writer's temp file, a file that is not a document)."""
    if not file_name.endswith(UNIT_SUFFIX):
        return None
    name = file_name[: -len(UNIT_SUFFIX)]
    return name if is_component(name) else None


def unit_id_from_name(name: str) -> str:
    """The id a unit file name stands for, as far as the name tells (a cut name: its start;
    "~" appears in no other name, it is encoded)."""
    return unquote(name.split("~", 1)[0])


def names_unit(name: str, unit_id: str) -> bool:
    """Whether a unit file name is that unit's: unit_name(id), or (format 1.2, where names
    were the ids themselves) the id."""
    return name in (unit_name(unit_id), unit_id)


def write_json_atomic(path: Path, doc: Any) -> None:
    write_bytes_atomic(path, dumps(doc).encode("utf-8"))


def write_json(path: Path, doc: Any) -> None:
    """Plain write (for files inside a run's temp directory, made visible by its rename)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(doc))


def walk_files(root: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """Every non-directory entry under root as ('/'-joined relative path, entry), in
    sorted order of the relative path strings (code point order), streaming.

    Sorting a directory by name, with '/' appended to sub-directory names, yields the
    global path order, so no full listing is ever held in memory.
    """

    def walk(directory: str, prefix: str) -> Iterator[tuple[str, os.DirEntry]]:
        with os.scandir(directory) as it:
            entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it]
        entries.sort(key=lambda pair: pair[0])
        for key, entry in entries:
            if key.endswith("/"):
                yield from walk(entry.path, prefix + key)
            else:
                yield prefix + key, entry

    yield from walk(str(root), "")


def natural_key(text: str) -> list:
    """A sort key reading runs of digits as numbers (units are listed in this order)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]
