"""An experiment of many traces is written and read in memory that does not grow with the
traces' content (issue 18; benchmarks/trace_scale.py measures a million).

Python's own allocations (tracemalloc) are measured while a bundle's finish() moves the
spans of N trace documents into spans.parquet and writes the manifest, while a reader
hands out every trace with its spans, and while verify compares the bundle with itself,
for a small and a ten times larger N. What may grow
is bounded per trace: names (documents' file names, sort keys, the reader's manifest index
and listing), a few hundred bytes; a trace's content (~2 KB here, its spans and assessment)
held for every trace would exceed the bound many times over.
"""
from __future__ import annotations

import os
import random
import sys
import tracemalloc
from pathlib import Path

import pytest

from trackport import _files
from trackport.bundle import BundleSink, schemas, spans
from trackport.bundle.documents import dumps, unit_doc
from trackport.bundle.layout import UNITS_DIR, natural_key, unit_file
from trackport.bundle.reader import BundleSource
from trackport.bundle.unit_order import compact_key
from trackport.domain import Experiment
from trackport.kinds import TRACE, Unit
from trackport.stores.base import Selection, StoreDescription, Unreadable
from trackport.transfer.compare import compare_stores
from trackport.samples.synthetic_traces import synthetic_trace

SMALL, LARGE = 200, 2_000
BYTES_PER_TRACE = 1_500  # what each extra trace may add to the peak (names only: a few hundred bytes)
BASE_MS = 1_700_000_000_000
EXPERIMENT = Experiment("1", "many traces", creation_time=BASE_MS, last_update_time=BASE_MS)


def trace(rng: random.Random, t: int) -> Unit:
    """A small trace: three spans with a few attributes, one assessment (~2 KB)."""
    return synthetic_trace(rng, t, EXPERIMENT.experiment_id, base_ms=BASE_MS)


def write_bundle(path: Path, n: int) -> BundleSink:
    """A bundle being exported, its n trace documents written as put_unit writes them
    (spans inside), but without put_unit's schema check and fsync, to be quick."""
    sink = BundleSink(path)
    sink.begin(StoreDescription(kind="synthetic", uri="synthetic:traces"), Selection())
    sink.put_experiment(EXPERIMENT)
    rng = random.Random(n)
    for t in range(n):
        unit = trace(rng, t)
        document = unit_file(path, EXPERIMENT.experiment_id, TRACE.name, unit.unit_id)
        if t == 0:
            document.parent.mkdir(parents=True)
        document.write_bytes(dumps(unit_doc(unit, EXPERIMENT.experiment_id)).encode())
    return sink


def peak(action) -> int:
    """Peak bytes Python allocated while action ran (beyond what it held before)."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def finish_and_read(path: Path, n: int) -> tuple[int, int, int]:
    sink = write_bundle(path, n)
    try:
        finishing = peak(lambda: sink.finish({}))
    finally:
        sink.close()
    assert not any(b'"spans":' in p.read_bytes() for p in (path / "experiments/1" / UNITS_DIR / TRACE.name).iterdir())
    seen = []

    def read() -> None:
        with BundleSource(path) as source:
            for unit in source.iter_units(TRACE, EXPERIMENT):
                assert not isinstance(unit, Unreadable), unit.reason
                assert len(unit.body["spans"]) == 3
                seen.append(unit.unit_id[-1])  # not the unit: a reader that keeps units is what is measured

    reading = peak(read)
    assert len(seen) == n

    def verify() -> None:  # the bundle against itself: every trace found, compared span by span
        with BundleSource(path) as expected, BundleSource(path) as actual:
            assert list(compare_stores(expected, actual, Selection(include_deleted=True))) == []

    return finishing, reading, peak(verify)


@pytest.fixture(scope="module")
def peaks(tmp_path_factory) -> dict[int, tuple[int, int, int]]:
    """The JSON Schema checks are left out (they hold nothing, and take most of the time);
    row groups of spans.parquet and reads while hashing are made smaller than their caps
    (16,384 spans; 16 MiB), which these sizes would not reach or would hide; a first small
    round imports what finish and reading import, outside the figures."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spans, "ROW_GROUP_SPANS", 300)
        patch.setattr(_files, "CHUNK_SIZE", 1 << 16)
        patch.setattr(schemas, "errors", lambda *args, **kw: [])
        patch.setattr(schemas, "body_errors", lambda *args, **kw: [])
        finish_and_read(tmp_path_factory.mktemp("warm-up") / "bundle", 20)
        return {n: finish_and_read(tmp_path_factory.mktemp(f"traces-{n}") / "bundle", n) for n in (SMALL, LARGE)}


@pytest.mark.parametrize("phase, index", [
    ("finish() (spans.parquet, counts, manifest)", 0), ("reading every trace", 1), ("verify (finding each trace's copy)", 2),
])
def test_memory_grows_by_names_only(peaks, phase, index):
    small, large = peaks[SMALL][index], peaks[LARGE][index]
    per_trace = (large - small) / (LARGE - SMALL)
    assert per_trace < BYTES_PER_TRACE, (
        f"{phase}: peak {small / 2**20:.1f} MiB for {SMALL:,} traces, {large / 2**20:.1f} MiB for {LARGE:,}:"
        f" {per_trace:,.0f} bytes more a trace (bound {BYTES_PER_TRACE:,}): something holds every trace's content"
    )


def test_a_resumed_finish_leaves_consolidated_documents_as_they_are(tmp_path):
    """finish() again over documents that all point at the file: nothing rewritten."""
    path = tmp_path / "bundle"
    sink = write_bundle(path, 50)
    sink.finish({})
    sink.close()
    spans_file = path / "experiments/1/spans.parquet"
    before = (spans_file.stat().st_mtime_ns, sorted((p.name, p.read_bytes()) for p in spans_file.parent.glob("units/trace/*")))
    sink = BundleSink(path)
    sink.begin(StoreDescription(kind="synthetic", uri="synthetic:traces"), Selection())
    sink.finish({})
    sink.close()
    assert (spans_file.stat().st_mtime_ns, sorted((p.name, p.read_bytes()) for p in spans_file.parent.glob("units/trace/*"))) == before
    assert os.path.getsize(path / "manifest.jsonl") > 0


def test_the_compact_sort_key_orders_as_natural_order_does():
    """The order readers list documents in is layout.natural_key's; the key that sorts a
    million of them (bundle/unit_order.py) must agree with it, and stay small."""
    rng = random.Random(5)
    parts = ["0", "1", "9", "007", "10", "a", "b", "-", "\0", "\1", "\2", "é", "٣"]
    texts = ["".join(rng.choice(parts) for _ in range(rng.randrange(6))) for _ in range(300)]
    texts += [f"tr-{rng.getrandbits(128):032x}" for _ in range(100)]
    for a in texts:
        for b in texts[:80]:
            assert (natural_key(a) < natural_key(b)) == (compact_key(a) < compact_key(b)), (a, b)
            assert (natural_key(a) == natural_key(b)) == (compact_key(a) == compact_key(b)), (a, b)
    assert sys.getsizeof(compact_key(f"tr-{rng.getrandbits(128):032x}")) < 120
