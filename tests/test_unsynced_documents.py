"""A bundle's unit documents are written without an fsync each and synced once by finish()
(a million traces cost a million fsyncs otherwise); a marker says so until then, and an
export resuming into a bundle whose last export did not get that far takes a document as
written only when it reads back whole, so a document a power cut tore is written again.

A power cut cannot be made in a test; what it leaves can: a document cut short, its
marker still there.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from trackport import _files
from trackport.bundle import BundleSink, writer
from trackport.bundle.layout import TRANSFER_DIR, unit_file
from trackport.bundle.reader import BundleSource
from trackport.bundle.writer import UNSYNCED_FILE
from trackport.domain import Experiment
from trackport.kinds import TRACE
from trackport.samples.synthetic_traces import synthetic_trace
from trackport.selection import resolve_experiments
from trackport.stores.base import Selection, SourceStore, StoreDescription
from trackport.transfer import transfer
from trackport.transfer.compare import compare_stores

BASE_MS = 1_700_000_000_000
EXPERIMENT = Experiment("1", "traces", creation_time=BASE_MS, last_update_time=BASE_MS)
N = 40


class Traces(SourceStore):
    """One experiment of N synthetic traces; stop_after: the listing ends with an error
    after that many (an export that dies half-way)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="synthetic", uri="synthetic:traces")

    def list_experiments(self, selection: Selection):
        return iter(resolve_experiments(selection, [EXPERIMENT], lambda run_ids: {}, self.describe().uri))

    def iter_runs(self, experiment, selection):
        return iter(())

    def iter_metric_batches(self, run):
        return iter(())

    def list_artifacts(self, run):
        return iter(())

    def open_artifact(self, run, path):
        raise FileNotFoundError(path)

    def iter_traces(self, experiment, selection=None):
        rng = random.Random(7)
        for t in range(N):
            if t == self.stop_after:
                raise KeyboardInterrupt  # as a kill would end it: nothing after runs
            yield synthetic_trace(rng, t, EXPERIMENT.experiment_id, base_ms=BASE_MS)


def export(source: SourceStore, path: Path):
    with BundleSink(path) as sink:
        return transfer(source, sink, Selection(include_deleted=True))


def documents(path: Path) -> list[Path]:
    return sorted(unit_file(path, "1", TRACE.name, "x").parent.glob("*.json"))


def test_documents_are_synced_once_and_a_torn_one_is_written_again(tmp_path, monkeypatch):
    bundle = tmp_path / "b"
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    with pytest.raises(KeyboardInterrupt):
        export(Traces(stop_after=N // 2), bundle)
    written = documents(bundle)  # those the workers finished before the end (not all that were listed)
    assert 3 <= len(written) <= N // 2
    # The root, the marker and the experiment were fsynced; no trace document was.
    assert len(fsyncs) < 10, fsyncs
    marker = bundle / TRANSFER_DIR / UNSYNCED_FILE
    assert marker.is_file()

    torn, empty = written[1], written[2]  # what a power cut may leave of unsynced documents
    torn.write_bytes(torn.read_bytes()[:100])
    empty.write_bytes(b"")
    synced: list[Path] = []
    real_sync = _files.sync_file_system
    monkeypatch.setattr(writer, "sync_file_system", lambda p: (synced.append(p), real_sync(p))[1])
    summary = export(Traces(), bundle)
    traces = summary.counts["traces"]
    assert (traces["done"], traces["skipped"]) == (N - len(written) + 2, len(written) - 2), traces
    assert synced == [bundle.absolute()]
    assert not marker.exists()
    assert len(documents(bundle)) == N

    with BundleSource(bundle) as copy:  # every trace whole, the torn two included
        assert list(compare_stores(Traces(), copy, Selection(include_deleted=True))) == []

    # A complete bundle has no marker, so the next export does not read its documents back.
    reads: list[str] = []
    monkeypatch.setattr(writer, "_reads_back", lambda p, u, real=writer._reads_back: (reads.append(u.unit_id), real(p, u))[1])
    summary = export(Traces(), bundle)
    assert summary.counts["traces"]["skipped"] == N and not reads
