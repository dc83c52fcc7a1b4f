"""A read-only target folder and a full disk: one line each, exit 8 (documented), and
nothing half-visible: no half-made database, no run without its artifacts, no artifacts
without their run, no temporary files; running again after the disk is fixed converges.

The file systems are real: small tmpfs mounts, made read-only or filled, where the test
may mount (as root, as CI runs). Elsewhere the full disk is simulated by a file object
that refuses writes with ENOSPC, which exercises the same paths in the sinks.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from memory_source import memory_bundle

from trackport.cli.main import cli

TEMPLATE_MARGIN = 6 << 20  # the new database (a copy of MLflow's empty schema: ~3.6 MB) and a little


def _mount(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """(mount point or None when this machine lets no test mount, size)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    size = TEMPLATE_MARGIN + (1 << 20)
    mounted = _mount(mount, size)
    yield (mount if mounted else None), size
    if mounted:
        _umount(mount)


def _run(args: list[str]) -> tuple[int, str, str]:
    result = subprocess.run(["trackport", *args], capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout, result.stderr


def _one_line(code: int, stderr: str, expected: int, *words: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == expected, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or ".creating-" in p.name or p.name.endswith("-journal")]


def _runs_are_whole(db: Path, bundle: Path, artifact_root: Path) -> set[str]:
    """Every run the database holds has all its artifacts, and every run folder under the
    artifact root belongs to a run the database holds. The ids of the runs held."""
    with sqlite3.connect(db) as con:
        runs = dict(con.execute("SELECT run_uuid, artifact_uri FROM runs"))
    for run_id, uri in runs.items():
        expected = json.loads(next(bundle.glob(f"experiments/*/runs/{run_id}/run.json")).read_text())["artifacts"]
        folder = Path(uri)
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
            a["path"] for a in expected
        ), run_id
    folders = {p.name for p in artifact_root.glob("*/*") if p.is_dir()}
    assert folders <= set(runs), folders - set(runs)
    return set(runs)


def test_a_read_only_target_folder(sample_bundle, tmp_path):
    ro = tmp_path / "ro"
    mounted = _mount(ro, 16 << 20)
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        words = "read-only"
    elif os.geteuid() != 0:  # no mount allowed: a folder this user may not write is refused alike
        ro.chmod(0o555)
        words = "permission denied"
    else:
        pytest.skip("root, but no file system can be mounted here: nothing makes a folder read-only for root")
    try:
        for args in (["import", str(sample_bundle), f"sqlite:///{ro / 'mlflow.db'}"],
                     ["export", str(sample_bundle), str(ro / "bundle")]):
            code, _, stderr = _run(args)
            _one_line(code, stderr, 8, words)
        assert list(ro.iterdir()) == []
    finally:
        if mounted:
            _umount(ro)
        else:
            ro.chmod(0o755)


def test_an_existing_store_on_a_read_only_disk(sample_bundle, tmp_path):
    disk = tmp_path / "ro"
    if not _mount(disk, 32 << 20):
        pytest.skip("this machine lets no test mount a file system")
    try:
        db = disk / "mlflow.db"
        code, _, stderr = _run(["import", str(sample_bundle), f"sqlite:///{db}", "--experiment", "Default"])
        assert code == 0, stderr
        before = db.read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code, _, stderr = _run(["import", str(sample_bundle), f"sqlite:///{db}"])
        _one_line(code, stderr, 8, "read-only")
        assert db.read_bytes() == before
    finally:
        _umount(disk)


def test_a_full_disk_under_a_sqlite_import(tmp_path, small_disk):
    mount, size = small_disk
    bundle = memory_bundle(tmp_path / "bundle", runs=12, artifact_bytes=300_000, points=200)
    if mount is None:
        return _simulated_full_disk(bundle, tmp_path)
    db = mount / "mlflow.db"
    code, out, stderr = _run(["import", str(bundle), f"sqlite:///{db}", "--json"])
    _one_line(code, stderr, 8, "no space left", "run the same command again")
    held = _runs_are_whole(db, bundle, mount / "mlflow-artifacts")
    assert 0 < len(held) < 12, held
    assert json.loads(out)["counts"]["runs"]["done"] == len(held)  # what was done before the stop
    assert _temporaries(mount) == []
    assert not list((mount / "mlflow.db.trackport" / "claims").iterdir())

    # Space again (the disk grows): the same command finishes the job.
    subprocess.run(["mount", "-o", f"remount,size={size * 3}", str(mount)], check=True)
    code, out, stderr = _run(["import", str(bundle), f"sqlite:///{db}", "--json"])
    assert code == 0, stderr
    assert json.loads(out)["counts"]["runs"]["skipped"] == len(held)
    verified = subprocess.run(["trackport", "verify", str(bundle), f"sqlite:///{db}", "--level", "full"],
                              capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0, verified.stdout


def test_a_full_disk_under_an_export(tmp_path, small_disk):
    mount, size = small_disk
    if mount is None:
        pytest.skip("this machine lets no test mount a file system; the sqlite case simulates instead")
    source = memory_bundle(tmp_path / "source", runs=12, artifact_bytes=800_000, points=200)
    target = mount / "bundle"
    code, _, stderr = _run(["export", str(source), str(target)])
    _one_line(code, stderr, 8, "no space left")
    assert not (target / "manifest.jsonl").exists()  # incomplete, so no reader takes it for whole
    assert _temporaries(target) == []
    subprocess.run(["mount", "-o", f"remount,size={size * 3}", str(mount)], check=True)
    code, _, stderr = _run(["export", str(source), str(target)])
    assert code == 0, stderr
    code, out, _ = _run(["bundle", "verify", str(target), "--level", "full"])
    assert code == 0, out


def _simulated_full_disk(bundle: Path, tmp_path: Path) -> None:
    """Where no file system can be mounted: artifact writes refused with ENOSPC after the
    first few runs, in process, through the same code."""
    import builtins

    from trackport.stores.sqlite import run_folders as _run_folders

    written = {"bytes": 0}
    real_open = builtins.open

    class _Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            written["bytes"] += len(data)
            if written["bytes"] > 1_000_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return _Full(f) if "x" in mode and "b" in mode else f

    db = tmp_path / "t" / "mlflow.db"
    _run_folders.open = full_open  # type: ignore[attr-defined]
    try:
        result = CliRunner().invoke(cli, ["import", str(bundle), f"sqlite:///{db}"])
    finally:
        del _run_folders.open
    assert result.exit_code == 8, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "no space left" in result.stderr
    held = _runs_are_whole(db, bundle, tmp_path / "t" / "mlflow-artifacts")
    assert 0 < len(held) < 12
    assert _temporaries(tmp_path / "t") == []
    result = CliRunner().invoke(cli, ["import", str(bundle), f"sqlite:///{db}"])
    assert result.exit_code == 0, result.output


def test_a_full_disk_under_the_spans_file(tmp_path, small_disk):
    """finish() moves the traces' spans out of their documents into spans.parquet: a disk
    that is full by then stops it with one line, leaving every trace's spans in its
    document, no temporary file and no manifest; with room again, finish() completes and
    the bundle verifies."""
    import random

    from trackport.bundle import BundleSink, verify_bundle
    from trackport.domain import Experiment
    from trackport.errors import StorageError
    from trackport.samples.synthetic_traces import synthetic_trace
    from trackport.stores.base import Selection, StoreDescription

    mount, _ = small_disk
    if mount is None:
        pytest.skip("this machine lets no test mount a file system")
    bundle = mount / "bundle"
    sink = BundleSink(bundle)
    sink.begin(StoreDescription(kind="synthetic", uri="synthetic:traces"), Selection())
    sink.put_experiment(Experiment("1", "traced", creation_time=1, last_update_time=1))
    rng = random.Random(7)
    for t in range(40):
        sink.put_unit(synthetic_trace(rng, t, "1", spans=10), "1")
    documents = list(bundle.glob("experiments/1/units/trace/*.json"))
    filler = mount / "filler"
    with open(filler, "wb") as f:  # the disk made full
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * (64 << 10))
                f.flush()
    with pytest.raises(StorageError) as refused:
        sink.finish({})
    assert "\n" not in str(refused.value) and "no space left" in str(refused.value), refused.value
    assert not (bundle / "experiments/1/spans.parquet").exists() and not (bundle / "manifest.jsonl").exists()
    assert _temporaries(bundle) == []
    assert all(b'"spans":' in p.read_bytes() for p in documents)

    filler.unlink()
    sink.finish({})
    sink.close()
    assert (bundle / "experiments/1/spans.parquet").is_file()
    assert not any(b'"spans":' in p.read_bytes() for p in documents)
    report = verify_bundle(bundle, level="full")
    assert report.ok, report.problems[:3]


def test_a_trace_bundle_on_a_read_only_disk_is_read_and_verified(tmp_path):
    """A backup of traces kept on read-only media: copying it into a new bundle and verifying
    it write nothing into it (the reader's and verify's scratch files go to the system's temp
    folder) and succeed."""
    import random

    from trackport.bundle import BundleSink
    from trackport.domain import Experiment
    from trackport.samples.synthetic_traces import synthetic_trace
    from trackport.stores.base import Selection, StoreDescription

    disk = tmp_path / "ro"
    if not _mount(disk, 32 << 20):
        pytest.skip("this machine lets no test mount a file system")
    try:
        bundle = disk / "bundle"
        with BundleSink(bundle) as sink:
            sink.begin(StoreDescription(kind="synthetic", uri="synthetic:traces"), Selection())
            sink.put_experiment(Experiment("1", "traced", creation_time=1, last_update_time=1))
            rng = random.Random(3)
            for t in range(30):
                sink.put_unit(synthetic_trace(rng, t, "1"), "1")
            sink.finish({})
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code, stdout, stderr = _run(["export", str(bundle), str(tmp_path / "copy")])
        assert code == 0, stderr
        assert [line.split()[1] for line in stdout.splitlines() if line.startswith("traces ")] == ["30"], stdout
        code, stdout, stderr = _run(["bundle", "verify", str(bundle), "--level", "full"])
        assert code == 0, stdout + stderr
        code, stdout, stderr = _run(["verify", str(bundle), str(tmp_path / "copy")])
        assert code == 0, stdout + stderr
    finally:
        _umount(disk)
