"""Hostile bundles: damaged and malicious bundles imported into a local sqlite store.

Each case takes a fresh copy of the sample bundle, damages it with a small function and
imports it with the real CLI (in process; a few through the console script). Every case
asserts the exit code, the error naming the problem and the file, the refused units in
the summary, that no run of a refused unit reached the target while the others did, and
that nothing outside the target changed (the bundle itself and a canary directory that
links point into included). See docs/bundle-format.md, "Reading untrusted bundles".
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from trackport import kinds
from trackport.bundle import BundleSource, verify_bundle
from trackport.cli.main import cli
from trackport.errors import FatalError, UnitError
from trackport.stores.base import Selection, Unreadable

ROOT = "trackport-bundle.json"
MANIFEST = "manifest.jsonl"
SECRET = b"secret outside the bundle\n"


# ---------------------------------------------------------------- the bundle as a test sees it
class Sample:
    """The copied bundle: its runs by name, and helpers to damage it."""

    def __init__(self, bundle: Path, outside: Path) -> None:
        self.bundle = bundle
        self.outside = outside  # a canary directory next to the bundle
        self.runs: dict[str, tuple[str, str]] = {}  # run name -> (experiment id, run id)
        self.parents: dict[str, str] = {}  # run id -> parent run id
        for run_json in bundle.glob("experiments/*/runs/*/run.json"):
            doc = json.loads(run_json.read_text())
            info = doc["info"]
            self.runs[info["run_name"]] = (info["experiment_id"], info["run_id"])
            if "mlflow.parentRunId" in doc["tags"]:
                self.parents[info["run_id"]] = doc["tags"]["mlflow.parentRunId"]

    def descendants(self, run_id: str) -> set[str]:
        """The runs under run_id (children, grandchildren, ...): refused with it."""
        found: set[str] = set()
        frontier = {run_id}
        while frontier:
            frontier = {child for child, parent in self.parents.items() if parent in frontier} - found
            found |= frontier
        return found

    def run_id(self, name: str) -> str:
        return self.runs[name][1]

    def run_dir(self, name: str) -> Path:
        exp, run = self.runs[name]
        return self.bundle / "experiments" / exp / "runs" / run

    def rel(self, path: Path) -> str:
        return path.relative_to(self.bundle).as_posix()

    def run_ids_of_experiment(self, exp: str) -> set[str]:
        return {run for e, run in self.runs.values() if e == exp}

    # -- damage
    def flip(self, path: Path, offset: int | None = None) -> None:
        data = bytearray(path.read_bytes())
        i = len(data) // 2 if offset is None else offset
        data[i] ^= 0x01
        path.write_bytes(bytes(data))

    def truncate(self, path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def edit_json(self, path: Path, change: Callable[[dict], object]) -> None:
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc, indent=2))

    def edit_manifest(self, change: Callable[[list[dict]], object]) -> None:
        lines = [json.loads(line) for line in (self.bundle / MANIFEST).read_text().splitlines()]
        change(lines)
        (self.bundle / MANIFEST).write_text(
            "".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in lines)
        )

    def record(self, run_dir: Path) -> None:
        """Make run.json's records agree with the files (what a careful attacker does)."""

        def change(doc: dict) -> None:
            if doc["metrics"] is not None:
                f = run_dir / doc["metrics"]["file"]
                doc["metrics"].update(size=f.stat().st_size, sha256=sha256(f))
            for a in doc["artifacts"]:
                f = run_dir / "artifacts" / a["path"]
                if f.is_file() and not f.is_symlink():
                    a.update(size=f.stat().st_size, sha256=sha256(f))

        self.edit_json(run_dir / "run.json", change)

    def reseal(self) -> None:
        """Rewrite the manifest to agree with every regular file (links are left out)."""
        entries = []
        for dirpath, dirnames, filenames in os.walk(self.bundle):
            for name in filenames:
                path = Path(dirpath) / name
                rel = self.rel(path)
                if rel == MANIFEST or path.is_symlink():
                    continue
                entries.append({"path": rel, "sha256": sha256(path), "size": path.stat().st_size})
        entries.sort(key=lambda e: e["path"])
        (self.bundle / MANIFEST).write_text(
            "".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in entries)
        )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- what a case expects
@dataclass
class Expect:
    code: int  # 0 imported, 1 unit(s) refused, 3 fatal
    words: tuple[str, ...] = ()  # in the error (fatal) or in every refused unit's reason
    refused: dict[str, str] = field(default_factory=dict)  # source id -> "run" | "experiment"
    absent: set[str] = field(default_factory=set)  # run ids that must not be in the target
    check: Callable[[Path], None] | None = None  # extra checks on the target db


def unit(s: Sample, name: str, *words: str) -> Expect:
    """One run refused for the words given, and its descendants with it ("its parent run
    ... failed"): a unit whose dependency cannot be moved is not moved."""
    run = s.run_id(name)
    family = {run} | s.descendants(run)
    return Expect(1, words, dict.fromkeys(family, "run"), family)


def fatal(*words: str) -> Expect:
    return Expect(3, words)


# ---------------------------------------------------------------- the corpus
# Damage as it happens: a byte flipped, a file cut or lost; the manifest is left alone.


def flipped_run_json(s: Sample) -> Expect:
    s.flip(s.run_dir("child") / "run.json")
    return unit(s, "child", "run.json", s.run_id("child"), "sha256")


def flipped_experiment_json(s: Sample) -> Expect:
    s.flip(s.bundle / "experiments/2/experiment.json")
    return Expect(1, ("experiments/2/experiment.json", "sha256"), {"2": "experiment"}, s.run_ids_of_experiment("2"))


def flipped_parquet(s: Sample) -> Expect:
    s.flip(s.run_dir("parent run") / "metrics.parquet")
    return unit(s, "parent run", f"{s.run_id('parent run')}/metrics.parquet", "sha256")


def flipped_artifact(s: Sample) -> Expect:
    s.flip(s.run_dir("parent run") / "artifacts/data/blob.bin")
    return unit(s, "parent run", "artifacts/data/blob.bin", "sha256", "damaged")


def flipped_artifact_last_byte(s: Sample) -> Expect:
    s.flip(s.run_dir("child") / "artifacts/report.json", offset=-1)
    return unit(s, "child", "artifacts/report.json", "sha256")


def flipped_manifest_syntax(s: Sample) -> Expect:
    s.flip(s.bundle / MANIFEST, offset=0)  # '{' -> 'z'
    return fatal(MANIFEST, "line 1", "invalid")


def flipped_manifest_hash(s: Sample) -> Expect:
    blob = s.rel(s.run_dir("parent run") / "artifacts/data/blob.bin")

    def change(lines: list[dict]) -> None:
        entry = next(e for e in lines if e["path"] == blob)
        entry["sha256"] = ("0" if entry["sha256"][0] != "0" else "1") + entry["sha256"][1:]

    s.edit_manifest(change)
    return unit(s, "parent run", "blob.bin", MANIFEST, "disagree")


def flipped_root_descriptor(s: Sample) -> Expect:
    text = (s.bundle / ROOT).read_text()
    offset = text.index('"created_at": "') + len('"created_at": "') + 3  # a digit of the year
    s.flip(s.bundle / ROOT, offset=offset)
    return fatal(ROOT, "sha256", MANIFEST)


def flipped_root_descriptor_syntax(s: Sample) -> Expect:
    s.flip(s.bundle / ROOT, offset=0)
    return fatal(ROOT, "JSON")


def truncated_parquet(s: Sample) -> Expect:
    s.truncate(s.run_dir("parent run") / "metrics.parquet")
    return unit(s, "parent run", "metrics.parquet", "bytes", MANIFEST)


def truncated_parquet_recorded(s: Sample) -> Expect:
    # run.json and the manifest agree with the cut file: the Parquet reader must refuse it.
    s.truncate(s.run_dir("parent run") / "metrics.parquet")
    s.record(s.run_dir("parent run"))
    s.reseal()
    return unit(s, "parent run", "metrics.parquet", "cannot be read")


def truncated_run_json(s: Sample) -> Expect:
    s.truncate(s.run_dir("killed run") / "run.json")
    return unit(s, "killed run", "run.json", "bytes")


def truncated_run_json_resealed(s: Sample) -> Expect:
    s.truncate(s.run_dir("killed run") / "run.json")
    s.reseal()
    return unit(s, "killed run", "run.json", "cannot be read as JSON")


def truncated_artifact(s: Sample) -> Expect:
    s.truncate(s.run_dir("parent run") / "artifacts/data/blob.bin")
    return unit(s, "parent run", "artifacts/data/blob.bin", "bytes")


def truncated_artifact_resealed(s: Sample) -> Expect:
    # The manifest agrees with the cut file, run.json does not: refused, both named.
    s.truncate(s.run_dir("parent run") / "artifacts/data/blob.bin")
    s.reseal()
    return unit(s, "parent run", "artifacts/data/blob.bin", "run.json", "disagree")


def missing_run_json(s: Sample) -> Expect:
    (s.run_dir("killed run") / "run.json").unlink()
    return unit(s, "killed run", "run.json", "missing")


def missing_parquet(s: Sample) -> Expect:
    (s.run_dir("child") / "metrics.parquet").unlink()
    return unit(s, "child", "metrics.parquet", "missing")


def missing_artifact(s: Sample) -> Expect:
    (s.run_dir("parent run") / "artifacts/model/sub/deep.txt").unlink()
    return unit(s, "parent run", "artifacts/model/sub/deep.txt", "missing")


def missing_experiment_json(s: Sample) -> Expect:
    (s.bundle / "experiments/2/experiment.json").unlink()
    return Expect(1, ("experiments/2/experiment.json", "missing"), {"2": "experiment"}, s.run_ids_of_experiment("2"))


def missing_manifest_line(s: Sample) -> Expect:
    blob = s.rel(s.run_dir("parent run") / "artifacts/data/blob.bin")
    s.edit_manifest(lambda lines: lines.remove(next(e for e in lines if e["path"] == blob)))
    return unit(s, "parent run", "artifacts/data/blob.bin", "not listed")


def extra_unlisted_files(s: Sample) -> Expect:
    # Ignored by import (the manifest is the table of contents), reported by verify.
    (s.run_dir("parent run") / "artifacts/sneaky.txt").write_text("not in the bundle")
    (s.bundle / "experiments/1/notes.txt").write_text("hello")
    stray = s.bundle / "experiments/1/runs/0123456789abcdef0123456789abcdef"
    shutil.copytree(s.run_dir("killed run"), stray)
    s.edit_json(stray / "run.json", lambda d: d["info"].update(run_id=stray.name, experiment_id="1"))
    problems = {p.path for p in verify_bundle(s.bundle, "complete").problems}
    assert s.rel(s.run_dir("parent run") / "artifacts/sneaky.txt") in problems
    assert "experiments/1/notes.txt" in problems and s.rel(stray / "run.json") in problems

    def check(db: Path) -> None:
        assert stray.name not in target_runs(db)
        assert not list(db.parent.rglob("sneaky.txt"))

    return Expect(0, absent={stray.name}, check=check)


# Malicious or wrong content, with a manifest that agrees (it is not signed).


def run_json_missing_field(s: Sample) -> Expect:
    s.edit_json(s.run_dir("killed run") / "run.json", lambda d: d["info"].pop("status"))
    s.reseal()
    return unit(s, "killed run", "run.json", "schema", "'status' is a required property")


def run_json_start_time_a_word(s: Sample) -> Expect:
    s.edit_json(s.run_dir("killed run") / "run.json", lambda d: d["info"].update(start_time="yesterday"))
    s.reseal()
    return unit(s, "killed run", "run.json", "start_time", "'yesterday' is not of type")


def run_json_params_a_list(s: Sample) -> Expect:
    s.edit_json(s.run_dir("child") / "run.json", lambda d: d.update(params=[["depth", "1"]]))
    s.reseal()
    return unit(s, "child", "run.json", "params", "is not of type 'object'")


def run_json_nan(s: Sample) -> Expect:
    path = s.run_dir("killed run") / "run.json"
    text = path.read_text()
    path.write_text(text.replace('"end_time": null', '"end_time": NaN').replace('"deleted_time": null', '"deleted_time": NaN'))
    s.reseal()
    return unit(s, "killed run", "run.json", "NaN")


def run_json_repeated_key(s: Sample) -> Expect:
    path = s.run_dir("child") / "run.json"
    path.write_text(path.read_text().replace('"depth": "1"', '"depth": "1", "depth": "2"'))
    s.reseal()
    return unit(s, "child", "run.json", "'depth' appears twice")


def run_json_nested_bomb(s: Sample) -> Expect:
    path = s.run_dir("killed run") / "run.json"
    s.edit_json(path, lambda d: d.update(bomb="BOMB"))
    path.write_text(path.read_text().replace('"BOMB"', "[" * 200_000 + "]" * 200_000))
    s.reseal()
    return unit(s, "killed run", "run.json", "nested too deeply")


def unknown_major_version(s: Sample) -> Expect:
    s.edit_json(s.bundle / ROOT, lambda d: d.update(format_version="2.0"))
    s.reseal()
    return fatal(ROOT, "2.0", "newer", "upgrade trackport")


def newer_minor_with_unknown_fields(s: Sample) -> Expect:
    # Positive control: 1.x readers read 1.y bundles and ignore fields they do not know.
    s.edit_json(s.bundle / ROOT, lambda d: d.update(format_version="1.9", future={"x": [1]}))
    s.edit_json(s.bundle / "experiments/1/experiment.json", lambda d: d.update(future_field=True))
    for name in s.runs:
        s.edit_json(s.run_dir(name) / "run.json", lambda d: (d.update(future=1), d["info"].update(future=2)))
    s.reseal()
    return Expect(0)


def artifact_path(path: str, *words: str) -> Callable[[Sample], Expect]:
    def case(s: Sample) -> Expect:
        def change(doc: dict) -> None:
            doc["artifacts"].append({"path": path, "size": len(SECRET), "sha256": hashlib.sha256(SECRET).hexdigest()})

        s.edit_json(s.run_dir("child") / "run.json", change)
        s.reseal()
        return unit(s, "child", "run.json", *words)

    return case


def artifact_symlink_out(s: Sample) -> Expect:
    blob = s.run_dir("parent run") / "artifacts/data/blob.bin"
    (s.outside / "blob.bin").write_bytes(blob.read_bytes())  # even with the right content
    blob.unlink()
    blob.symlink_to(s.outside / "blob.bin")
    return unit(s, "parent run", "artifacts/data/blob.bin", "symbolic link")


def run_dir_symlink(s: Sample) -> Expect:
    run_dir = s.run_dir("child")
    shutil.move(run_dir, s.outside / run_dir.name)
    run_dir.symlink_to(s.outside / run_dir.name, target_is_directory=True)
    return unit(s, "child", "run.json", "symbolic link")


def experiment_dir_symlink(s: Sample) -> Expect:
    exp_dir = s.bundle / "experiments/2"
    shutil.move(exp_dir, s.outside / "2")
    exp_dir.symlink_to(s.outside / "2", target_is_directory=True)
    return Expect(1, ("experiments/2/experiment.json", "symbolic link"), {"2": "experiment"}, s.run_ids_of_experiment("2"))


def duplicate_run_id(s: Sample) -> Expect:
    # The same run in two experiments: which one is genuine cannot be told; both refused.
    original = s.run_dir("child")
    copy = s.bundle / "experiments/2/runs" / original.name
    shutil.copytree(original, copy)
    s.edit_json(copy / "run.json", lambda d: d["info"].update(experiment_id="2"))
    s.reseal()
    run = s.run_id("child")
    family = {run} | s.descendants(run)
    return Expect(1, ("more than one experiment", f"experiments/1/runs/{run}", f"experiments/2/runs/{run}"),
                  dict.fromkeys(family, "run"), family)


def run_id_not_its_directory(s: Sample) -> Expect:
    other = s.run_id("parent run")
    s.edit_json(s.run_dir("killed run") / "run.json", lambda d: d["info"].update(run_id=other))
    s.reseal()
    return unit(s, "killed run", "run.json", f"holds run {other!r}")


def parent_points_nowhere(s: Sample) -> Expect:
    # Not damage: a partial export gives the same. Imported with the tag as it stands.
    nowhere = "f" * 32
    s.edit_json(s.run_dir("killed run") / "run.json", lambda d: d["tags"].update({"mlflow.parentRunId": nowhere}))
    s.reseal()
    run = s.run_id("killed run")

    def check(db: Path) -> None:
        with sqlite3.connect(db) as conn:
            (value,) = conn.execute(
                "SELECT value FROM tags WHERE run_uuid = ? AND key = 'mlflow.parentRunId'", (run,)
            ).fetchone()
        assert value == nowhere

    return Expect(0, check=check)


def long_value(key: str, value: str) -> Callable[[Sample], Expect]:
    """The format has no length limit and the local sqlite target holds anything: the run
    is imported whole (bounded: one 10 MB document, read once)."""

    def case(s: Sample) -> Expect:
        s.edit_json(s.run_dir("killed run") / "run.json", lambda d: d["params"].update({key: value}))
        s.reseal()
        run = s.run_id("killed run")

        def check(db: Path) -> None:
            with sqlite3.connect(db) as conn:
                rows = conn.execute(
                    "SELECT length(key), length(value) FROM params WHERE run_uuid = ? AND length(key) = ?",
                    (run, len(key)),
                ).fetchall()
            assert rows == [(len(key), len(value))]

        return Expect(0, check=check)

    return case


def manifest_huge_size(s: Sample) -> Expect:
    rel = s.rel(s.run_dir("killed run") / "run.json")

    def change(lines: list[dict]) -> None:
        next(e for e in lines if e["path"] == rel)["size"] = 10**30

    s.edit_manifest(change)
    return unit(s, "killed run", "run.json", "256 MiB")


def manifest_huge_artifact_size(s: Sample) -> Expect:
    blob = s.rel(s.run_dir("parent run") / "artifacts/data/blob.bin")

    def change(lines: list[dict]) -> None:
        next(e for e in lines if e["path"] == blob)["size"] = 2**62

    s.edit_manifest(change)
    return unit(s, "parent run", "artifacts/data/blob.bin", "disagree")


def manifest_lists_outside(s: Sample) -> Expect:
    def change(lines: list[dict]) -> None:
        lines.insert(0, {"path": "../outside/secret.txt", "size": len(SECRET), "sha256": hashlib.sha256(SECRET).hexdigest()})

    s.edit_manifest(change)
    return fatal(MANIFEST, "line 1", "unsafe", "../outside")


def manifest_out_of_order(s: Sample) -> Expect:
    s.edit_manifest(lambda lines: lines.insert(0, lines.pop()))
    return fatal(MANIFEST, "out of path order")


def manifest_repeated_line(s: Sample) -> Expect:
    s.edit_manifest(lambda lines: lines.insert(1, dict(lines[0])))
    return fatal(MANIFEST, "line 2", "listed twice")


def parquet(change: Callable[[pa.Table, str], pa.Table], *words: str) -> Callable[[Sample], Expect]:
    def case(s: Sample) -> Expect:
        run_dir = s.run_dir("parent run")
        table = change(pq.read_table(run_dir / "metrics.parquet"), s.run_id("parent run"))
        pq.write_table(table, run_dir / "metrics.parquet")
        s.edit_json(run_dir / "run.json", lambda d: d["metrics"].update(points=table.num_rows))
        s.record(run_dir)
        s.reseal()
        return unit(s, "parent run", "metrics.parquet", *words)

    return case


def _step_as_string(t: pa.Table, run: str) -> pa.Table:
    return t.set_column(t.schema.get_field_index("step"), "step", t.column("step").cast(pa.string()))


def _value_as_int(t: pa.Table, run: str) -> pa.Table:
    return t.set_column(t.schema.get_field_index("value"), "value", pa.array([1] * t.num_rows, pa.int64()))


def _rows_of_another_run(t: pa.Table, run: str) -> pa.Table:
    plain = t.cast(pa.schema([f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f for f in t.schema]))
    other = plain.slice(0, 5).set_column(0, plain.schema.field(0), pa.array(["e" * 32] * 5, pa.string()))
    return pa.concat_tables([plain, other])


def _no_key_column(t: pa.Table, run: str) -> pa.Table:
    return t.drop_columns(["key"])


# Damage that verify used to pass while import refused it: the two now share one index
# and one validator (bundle/index.py, bundle/validator.py), so they agree.


def manifest_line_not_utf8(s: Sample) -> Expect:
    data = (s.bundle / MANIFEST).read_bytes().splitlines(keepends=True)
    data[-1] = data[-1].replace(b'"path":"', b'"path":"\xff', 1)  # sorts last still
    (s.bundle / MANIFEST).write_bytes(b"".join(data))
    return fatal(MANIFEST, f"line {len(data)}", "not UTF-8")


def manifest_line_repeated_key(s: Sample) -> Expect:
    lines = (s.bundle / MANIFEST).read_text().splitlines(keepends=True)
    entry = json.loads(lines[0])  # the same path twice: which one counts cannot be told
    lines[0] = '{"path":%s,"path":%s,"sha256":"%s","size":%d}\n' % (
        json.dumps(entry["path"]), json.dumps(entry["path"]), entry["sha256"], entry["size"])
    (s.bundle / MANIFEST).write_text("".join(lines))
    return fatal(MANIFEST, "line 1", "'path' appears twice")


def root_descriptor_repeated_key(s: Sample) -> Expect:
    path = s.bundle / ROOT
    path.write_text(path.read_text().replace('"format": "trackport-bundle"', '"format": "trackport-bundle", "format": "other"'))
    s.reseal()
    return fatal(ROOT, "'format' appears twice")


def root_counts_null(s: Sample) -> Expect:
    s.edit_json(s.bundle / ROOT, lambda d: d.update(counts=None))
    s.reseal()
    return fatal(ROOT, "counts are null")


def experiment_json_repeated_key(s: Sample) -> Expect:
    path = s.bundle / "experiments/2/experiment.json"
    path.write_text(path.read_text().replace('"lifecycle_stage": ', '"lifecycle_stage": "deleted", "lifecycle_stage": ', 1))
    s.reseal()
    return Expect(1, ("experiments/2/experiment.json", "'lifecycle_stage' appears twice"), {"2": "experiment"},
                  s.run_ids_of_experiment("2"))


def run_json_nan_in_unknown_field(s: Sample) -> Expect:
    # The schema allows fields it does not know (newer minor versions): NaN there is still not JSON.
    path = s.run_dir("killed run") / "run.json"
    s.edit_json(path, lambda d: d.update(future="FUTURE"))
    path.write_text(path.read_text().replace('"FUTURE"', "NaN"))
    s.reseal()
    return unit(s, "killed run", "run.json", "NaN")


def run_json_records_another_sha(s: Sample) -> Expect:
    # Every file matches the manifest; run.json's own record of an artifact does not.
    def change(doc: dict) -> None:
        a = next(a for a in doc["artifacts"] if a["path"] == "data/blob.bin")
        a["sha256"] = ("0" if a["sha256"][0] != "0" else "1") + a["sha256"][1:]

    s.edit_json(s.run_dir("parent run") / "run.json", change)
    s.reseal()
    return unit(s, "parent run", "artifacts/data/blob.bin", "run.json", "disagree")


def ledger_line_invalid(s: Sample) -> Expect:
    # The engine's state of the export, not content: import does not read it (see AGREEMENT_EXCEPTIONS).
    with open(s.bundle / "transfer/ledger.jsonl", "a") as f:
        f.write('{"kind": 5}\n')
    s.reseal()
    assert any("ledger.jsonl" in p.path for p in verify_bundle(s.bundle, "full").problems)
    return Expect(0)


# Documents of units of generic kinds (format 1.2): experiments/<E>/units/<kind>/<id>.json.
NOTE = kinds.UnitKind("note", "notes", depends_on=("experiment", "run"), schema={
    "type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}})


def note_doc(unit_id: str, experiment_id: str = "1", kind: str = "note", **body) -> dict:
    return {"kind": kind, "id": unit_id, "experiment_id": experiment_id, "name": f"note {unit_id}", "refs": {},
            "body": body or {"text": "hello"}}


def add_unit(s: Sample, doc: dict | str, kind: str = "note", unit_id: str = "n1", experiment_id: str = "1") -> Path:
    """A unit document beside a valid note n0, resealed unless the damage is to be caught by the manifest."""
    folder = s.bundle / "experiments" / experiment_id / "units" / kind
    folder.mkdir(parents=True, exist_ok=True)
    (s.bundle / "experiments" / experiment_id / "units/note").mkdir(exist_ok=True)
    (s.bundle / "experiments" / experiment_id / "units/note/n0.json").write_text(json.dumps(note_doc("n0", experiment_id)))
    path = folder / f"{unit_id}.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    s.reseal()
    return path


def refused_unit(unit_id: str, *words: str) -> Expect:
    return Expect(1, words, {unit_id: "note"})


def units_valid_and_of_an_unknown_kind(s: Sample) -> Expect:
    # Positive control: a kind this trackport does not know is not refused, its body not checked.
    add_unit(s, note_doc("n1"))
    add_unit(s, note_doc("g1", kind="gadget", anything=[1, {"x": None}]), kind="gadget", unit_id="g1")
    return Expect(0)


def unit_repeated_key(s: Sample) -> Expect:
    add_unit(s, json.dumps(note_doc("n1")).replace('"text": "hello"', '"text": "hello", "text": "bye"'))
    return refused_unit("n1", "units/note/n1.json", "'text' appears twice")


def unit_body_fails_its_schema(s: Sample) -> Expect:
    add_unit(s, note_doc("n1", text=5))
    return refused_unit("n1", "units/note/n1.json", "body does not match", "5 is not of type 'string'")


def unit_envelope_fails_its_schema(s: Sample) -> Expect:
    add_unit(s, dict(note_doc("n1"), refs=["run"]))
    return refused_unit("n1", "units/note/n1.json", "unit schema", "refs")


def unit_not_the_one_its_path_names(s: Sample) -> Expect:
    add_unit(s, note_doc("n2"))
    return refused_unit("n1", "units/note/n1.json", "not the unit its path names")


def unit_flipped(s: Sample) -> Expect:
    path = add_unit(s, note_doc("n1"))
    s.flip(path, offset=len(path.read_text()) - 5)
    return refused_unit("n1", "units/note/n1.json", "sha256")


def unit_unknown_kind_infinity(s: Sample) -> Expect:
    # A kind not known here is still a bundle document: strict JSON is checked (its body is not).
    # Import moves only the kinds it knows, so it does not read this one (see AGREEMENT_EXCEPTIONS).
    add_unit(s, json.dumps(note_doc("g1", kind="gadget", size="INF")).replace('"INF"', "Infinity"), kind="gadget", unit_id="g1")
    assert "Infinity" in next(iter_unreadable_units(s.bundle, "gadget")).reason
    return Expect(0)


# Units of the whole workspace (the model registry's scope): units/<kind>/<id>.json.
LABEL = kinds.UnitKind("label", "labels", depends_on=("experiment", "run"), scope="workspace")


def add_workspace_unit(s: Sample, doc: dict | str, unit_id: str = "l1") -> None:
    folder = s.bundle / "units" / "label"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{unit_id}.json").write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    s.reseal()


def label_doc(unit_id: str = "l1", experiment_id: str | None = None) -> dict:
    return {"kind": "label", "id": unit_id, "experiment_id": experiment_id, "name": "best", "refs": {}, "body": {}}


def workspace_unit_valid(s: Sample) -> Expect:
    # Positive control: a valid unit of the workspace (the target cannot hold labels: skipped, said).
    add_workspace_unit(s, label_doc())
    return Expect(0)


def workspace_unit_repeated_key(s: Sample) -> Expect:
    add_workspace_unit(s, json.dumps(label_doc()).replace('"name": "best"', '"name": "best", "name": "worst"'))
    return Expect(1, ("units/label/l1.json", "'name' appears twice"), {"l1": "label"})


def workspace_unit_claims_an_experiment(s: Sample) -> Expect:
    add_workspace_unit(s, label_doc(experiment_id="1"))
    return Expect(1, ("units/label/l1.json", "not the unit its path names"), {"l1": "label"})


def iter_unreadable_units(bundle: Path, kind: str):
    source = BundleSource(bundle)
    for experiment in source.list_experiments(Selection(include_deleted=True)):
        for unit in source.iter_units(kinds.kind(kind), experiment):
            if isinstance(unit, Unreadable):
                yield unit


CASES: dict[str, Callable[[Sample], Expect]] = {
    "flipped-run-json": flipped_run_json,
    "flipped-experiment-json": flipped_experiment_json,
    "flipped-parquet": flipped_parquet,
    "flipped-artifact": flipped_artifact,
    "flipped-artifact-last-byte": flipped_artifact_last_byte,
    "flipped-manifest-syntax": flipped_manifest_syntax,
    "flipped-manifest-hash": flipped_manifest_hash,
    "flipped-root-descriptor": flipped_root_descriptor,
    "flipped-root-descriptor-syntax": flipped_root_descriptor_syntax,
    "truncated-parquet": truncated_parquet,
    "truncated-parquet-recorded": truncated_parquet_recorded,
    "truncated-run-json": truncated_run_json,
    "truncated-run-json-resealed": truncated_run_json_resealed,
    "truncated-artifact": truncated_artifact,
    "truncated-artifact-resealed": truncated_artifact_resealed,
    "missing-run-json": missing_run_json,
    "missing-parquet": missing_parquet,
    "missing-artifact": missing_artifact,
    "missing-experiment-json": missing_experiment_json,
    "missing-manifest-line": missing_manifest_line,
    "extra-unlisted-files": extra_unlisted_files,
    "run-json-missing-field": run_json_missing_field,
    "run-json-start-time-a-word": run_json_start_time_a_word,
    "run-json-params-a-list": run_json_params_a_list,
    "run-json-nan": run_json_nan,
    "run-json-repeated-key": run_json_repeated_key,
    "run-json-nested-bomb": run_json_nested_bomb,
    "unknown-major-version": unknown_major_version,
    "newer-minor-unknown-fields": newer_minor_with_unknown_fields,
    "artifact-path-dotdot": artifact_path("../../../../../escaped.txt", "'..' segment"),
    "artifact-path-absolute": artifact_path("/tmp/trackport-escaped.txt", "is absolute"),
    "artifact-path-drive": artifact_path("C:/escaped.txt", "is absolute"),
    "artifact-path-nul": artifact_path("model/a\0b", "NUL"),
    "artifact-path-backslash": artifact_path("..\\..\\escaped.txt", "backslash"),
    "artifact-symlink-out": artifact_symlink_out,
    "run-dir-symlink": run_dir_symlink,
    "experiment-dir-symlink": experiment_dir_symlink,
    "duplicate-run-id": duplicate_run_id,
    "run-id-not-its-directory": run_id_not_its_directory,
    "parent-points-nowhere": parent_points_nowhere,
    "long-param-key": long_value("k" * 10_000, "1"),
    "long-param-value": long_value("big", "v" * 10_000_000),
    "manifest-huge-size": manifest_huge_size,
    "manifest-huge-artifact-size": manifest_huge_artifact_size,
    "manifest-lists-outside": manifest_lists_outside,
    "manifest-out-of-order": manifest_out_of_order,
    "manifest-repeated-line": manifest_repeated_line,
    "parquet-step-as-string": parquet(_step_as_string, "column 'step' is string, not int64"),
    "parquet-value-as-int": parquet(_value_as_int, "column 'value' is int64, not float64"),
    "parquet-rows-of-another-run": parquet(_rows_of_another_run, "holds points of run 'eeee"),
    "parquet-no-key-column": parquet(_no_key_column, "has no column 'key'"),
    "manifest-line-not-utf8": manifest_line_not_utf8,
    "manifest-line-repeated-key": manifest_line_repeated_key,
    "root-descriptor-repeated-key": root_descriptor_repeated_key,
    "root-counts-null": root_counts_null,
    "experiment-json-repeated-key": experiment_json_repeated_key,
    "run-json-nan-in-unknown-field": run_json_nan_in_unknown_field,
    "run-json-records-another-sha": run_json_records_another_sha,
    "ledger-line-invalid": ledger_line_invalid,
    "units-valid-and-of-an-unknown-kind": units_valid_and_of_an_unknown_kind,
    "unit-repeated-key": unit_repeated_key,
    "unit-body-fails-its-schema": unit_body_fails_its_schema,
    "unit-envelope-fails-its-schema": unit_envelope_fails_its_schema,
    "unit-not-the-one-its-path-names": unit_not_the_one_its_path_names,
    "unit-flipped": unit_flipped,
    "unit-unknown-kind-infinity": unit_unknown_kind_infinity,
    "workspace-unit-valid": workspace_unit_valid,
    "workspace-unit-repeated-key": workspace_unit_repeated_key,
    "workspace-unit-claims-an-experiment": workspace_unit_claims_an_experiment,
}
# These go through the installed console script, as a user runs it (exit codes, stderr).
THROUGH_SUBPROCESS = {"flipped-artifact", "unknown-major-version", "manifest-lists-outside"}


@pytest.fixture(autouse=True, scope="module")
def _note_kind():
    """The corpus's unit documents are of kinds "note" and "label" (the workspace's),
    registered while these tests run."""
    kinds.register(NOTE)
    kinds.register(LABEL)
    yield
    kinds.unregister(NOTE.name)
    kinds.unregister(LABEL.name)


# ---------------------------------------------------------------- running and checking
def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under root (not following links) with its kind, size, mtime and, for
    files, content hash; links with their target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path == skip:
                continue
            st = path.lstat()
            if path.is_symlink():
                out[str(path)] = ("link", os.readlink(path))
            elif path.is_dir():
                out[str(path)] = ("dir",)
            else:
                out[str(path)] = ("file", st.st_size, st.st_mtime_ns, sha256(path))
    return out


def target_runs(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT run_uuid FROM runs")}


def import_bundle(bundle: Path, db: Path, subprocess_: bool) -> tuple[int, str, str]:
    args = ["import", str(bundle), f"sqlite:///{db}", "--include-deleted", "--json"]
    if subprocess_:
        result = subprocess.run(["trackport", *args], capture_output=True, text=True, timeout=300)
        return result.returncode, result.stdout, result.stderr
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, made once: creating MLflow's schema takes seconds, so
    cases whose import is expected to write start from a copy of it (an import into an
    existing empty store). Cases expected to fail fatally start with no target at all and
    must not create one."""
    from trackport.stores.sqlite.store import SqliteStore

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    SqliteStore(f"sqlite:///{path}", create=True).close()
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_bundle(case, bundle_copy, tmp_path, empty_store):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    sample = Sample(bundle_copy, outside)
    all_runs = {run for _, run in sample.runs.values()}
    expect = CASES[case](sample)

    target = tmp_path / "target"
    db = target / "mlflow.db"
    if expect.code != 3:
        target.mkdir()
        shutil.copyfile(empty_store, db)
    before = snapshot(tmp_path, skip=target)
    code, stdout, stderr = import_bundle(bundle_copy, db, case in THROUGH_SUBPROCESS)

    assert code == expect.code, (code, stdout, stderr)
    # Nothing written outside the target: the bundle, the canary, the links, all as they were.
    assert snapshot(tmp_path, skip=target) == before
    assert not Path("/tmp/trackport-escaped.txt").exists()

    if expect.code == 3:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        for word in expect.words:
            assert word in lines[0], (word, lines[0])
        assert not target.exists(), "a fatal error must leave no target behind"
        return

    report = json.loads(stdout)
    check_refusals(report, expect)
    present = target_runs(db)
    assert present == all_runs - expect.absent, (present, expect.absent)
    assert report["counts"]["runs"]["done"] == len(present)
    for run in expect.absent:  # nothing of a refused run in the target, artifacts included
        assert not list(target.rglob(f"mlartifacts/*/{run}")), run
    if expect.check:
        expect.check(db)


# What a tracking server refuses that a local sqlite store holds (MLflow's limits): the run
# is refused before anything of it is written there.
REST_REFUSES = {"long-param-key": ("killed run", "param key", "at most 250"),
                "long-param-value": ("killed run", "param 'big'", "characters")}


def _server_runs(url: str, case: str) -> dict[str, str]:
    """source run id -> lifecycle of every run (deleted ones too) in the case's experiments."""
    import requests

    api = f"{url}/api/2.0/mlflow"
    experiments = requests.post(f"{api}/experiments/search", json={"max_results": 50000, "view_type": "ALL"},
                                timeout=60).json().get("experiments", [])
    ids = [e["experiment_id"] for e in experiments if e["name"].endswith(f" [{case}]")]
    if not ids:
        return {}
    body = {"experiment_ids": ids, "run_view_type": "ALL", "max_results": 1000}
    runs = requests.post(f"{api}/runs/search", json=body, timeout=60).json().get("runs", [])
    out = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        out[tags["trackport.source.run_id"]] = run["info"]["lifecycle_stage"]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_bundle_into_a_server(case, bundle_copy, tmp_path, target_server):
    """The same corpus into a tracking server, which cannot take a run back (deleting only
    marks it): a refused run, and the runs under it, leave nothing there, not even a
    deleted run. The case's experiments get the case's name, so one server serves all."""
    outside = tmp_path / "outside"
    outside.mkdir()
    sample = Sample(bundle_copy, outside)
    for doc in bundle_copy.glob("experiments/*/experiment.json"):
        sample.edit_json(doc, lambda d: d.update(name=f"{d['name']} [{case}]"))
    sample.reseal()
    all_runs = {run for _, run in sample.runs.values()}
    expect = CASES[case](sample)
    if case in REST_REFUSES:
        name, *words = REST_REFUSES[case]
        expect = unit(sample, name, *words)
    args = ["import", str(bundle_copy), target_server.url, "--json", "--workers", "8"]
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == expect.code, (result.exit_code, result.stdout, result.stderr)
    present = _server_runs(target_server.url, case)
    if expect.code == 3:
        assert present == {}
        return
    check_refusals(json.loads(result.stdout), expect)
    assert set(present) == all_runs - expect.absent, (set(present) ^ (all_runs - expect.absent))


def check_refusals(report: dict, expect: Expect) -> None:
    """The refused units are exactly those expected: the damaged one with the words that
    name the damage, its dependents because of it."""
    refused = {f["source_id"]: f for f in report["failures"]}
    assert {k: f["kind"] for k, f in refused.items()} == expect.refused, report["failures"]
    for failure in refused.values():
        assert "\n" not in failure["reason"]
        words = failure["reason"].split()
        if words[0] == "its":  # "its run <id> failed", "its parent run <id> ...", "its experiment <id> ..."
            named = words[3] if words[1] == "parent" else words[2]
            assert named in refused or "could not be written" in failure["reason"], failure
            continue
        for word in expect.words:
            assert word in failure["reason"], (word, failure["reason"])


# ---------------------------------------------------------------- verify agrees with import
# Where `bundle verify --level full` and import legitimately differ, and why.
AGREEMENT_EXCEPTIONS = {
    # Files the manifest does not list are not part of the bundle: import never reads them,
    # verify --level complete (and full) reports each one.
    "extra-unlisted-files": "unlisted files",
    # transfer/ holds the state of the export that wrote the bundle (ledger, id map, log):
    # import reads the bundle's units, not that state; verify --level full checks its lines.
    "ledger-line-invalid": "the export's own state",
    # Import moves only the unit kinds this trackport knows (the others are named in a
    # notice); verify checks every document of the bundle as a document, whatever its kind.
    "unit-unknown-kind-infinity": "a document of a kind import does not read",
}


def refused_by_reader(bundle: Path) -> set[tuple[str, str] | None]:
    """What import refuses, read straight from BundleSource as the engine reads it (every
    experiment, run, metric point, artifact byte and unit of a registered kind): None for
    the whole bundle, else (kind, id) of each refused unit."""
    try:
        source = BundleSource(bundle)
    except FatalError:
        return {None}
    refused: set[tuple[str, str] | None] = set()
    everything = Selection(include_deleted=True)
    for experiment in source.list_experiments(everything):
        if isinstance(experiment, Unreadable):
            refused.add((experiment.kind, experiment.source_id))
            continue
        for run in source.iter_runs(experiment, everything):
            if isinstance(run, Unreadable):
                refused.add((run.kind, run.source_id))
                continue
            try:
                source.check_run(run)
            except UnitError:
                refused.add(("run", run.run_id))
        for kind in kinds.generic_kinds():
            refused |= {(u.kind, u.source_id) for u in source.iter_units(kind, experiment) if isinstance(u, Unreadable)}
    for kind in kinds.generic_kinds("workspace"):
        refused |= {(u.kind, u.source_id) for u in source.iter_units(kind, None) if isinstance(u, Unreadable)}
    return refused


@pytest.mark.parametrize("case", list(CASES))
def test_verify_full_passes_exactly_when_import_refuses_nothing(case, bundle_copy, tmp_path):
    """The same corpus: `verify --level full` passes exactly when import takes everything
    (test_hostile_bundle asserts the import's exit code; the reader read here agrees with
    it), and reports each refused unit (or, when import refuses the whole bundle, a
    problem of the bundle as a whole)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    expect = CASES[case](Sample(bundle_copy, outside))
    refused = refused_by_reader(bundle_copy)
    assert bool(refused) == (expect.code != 0), refused
    report = verify_bundle(bundle_copy, "full")
    if case in AGREEMENT_EXCEPTIONS:
        assert not report.ok and not refused, report.problems
        return
    assert report.ok == (not refused), report.problems
    reported = {p.unit for p in report.problems}
    assert refused <= reported, (refused, report.problems)


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30


# ---------------------------------------------------------------- the checked artifact stream
def _stream(tmp_path: Path, data: bytes, recorded: bytes):
    from trackport.bundle.checked_stream import CheckedArtifact

    path = tmp_path / "artifact.bin"
    path.write_bytes(data)
    return CheckedArtifact(open(path, "rb"), path, len(recorded), hashlib.sha256(recorded).hexdigest())


def test_artifact_stream_withholds_the_last_bytes_of_damaged_content(tmp_path):
    from trackport.errors import UnitError

    good = bytes(range(256)) * 40
    bad = good[:-1] + b"\x00"
    with _stream(tmp_path, bad, good) as s:
        got = b""
        with pytest.raises(UnitError, match="artifact.bin does not match its sha256"):
            while chunk := s.read(1000):
                got += chunk
        assert len(got) < len(good)  # what a sink holds is never the whole file
        with pytest.raises(UnitError):
            s.read(1)
    with _stream(tmp_path, good[:-10], good) as s, pytest.raises(UnitError, match="shorter"):
        s.read()
    with _stream(tmp_path, good + b"x", good) as s, pytest.raises(UnitError, match="more than"):
        s.read()


def test_artifact_stream_allows_rewinds_and_seeks(tmp_path):
    good = bytes(range(256)) * 40
    with _stream(tmp_path, good, good) as s:  # what an HTTP upload does: size, rewind, read, retry
        assert s.seekable() and s.seek(0, os.SEEK_END) == len(good)
        s.seek(0)
        assert s.read(100) == good[:100]
        s.seek(0)
        assert s.read() == good
        s.seek(5000)  # a multipart upload jumping to a part: the skipped range is hashed too
        assert s.read(10) == good[5000:5010]
    with _stream(tmp_path, good, good) as s:
        s.seek(len(good) - 5)
        assert s.read() == good[-5:]
    with _stream(tmp_path, b"", b"") as s:
        assert s.read(10) == b""
    from trackport.errors import UnitError

    with _stream(tmp_path, good[:-1] + b"\x00", good) as s, pytest.raises(UnitError):
        s.seek(len(good) - 5)
        s.read()
