"""Large experiments of traces stream in bounded memory (issue 18, item 2): peak RSS and time
of moving N traces of one experiment, for each N given.

    python benchmarks/trace_scale.py [--traces 10000 100000 1000000] [--verify-up-to 100000]
                                     [--copy-up-to 100000] [--read-up-to N] [--work DIR] [--keep]

For each N, each phase in a process of its own, measured by benchmarks/measure.py (wall, CPU,
peak RSS of that process alone):

1. export: a synthetic source of N small traces (3 spans with a few attributes, one
   assessment each; made one at a time as the engine asks, never held) -> bundle A, with
   trackport's library transfer() (put_unit, then finish(): spans into spans.parquet, manifest);
2. copy: bundle A -> bundle B (the bundle reader and spans.attach, the writer again), for
   N <= --copy-up-to; above it, read: bundle A -> a sink that writes nothing (the reader and
   the engine alone: a second bundle of a million traces is another 4 GB of 4 KiB blocks),
   for N <= --read-up-to (no limit unless given);
3. verify: `trackport verify A B --level full`, for N <= --verify-up-to (verify holds the
   target's units of a kind in memory to find each copy: transfer/compare_units.py).
4. idle: the same process importing trackport and making the source, moving nothing: what
   the figures above are compared with.

Results go to benchmarks/results/trace-scale-<Ns>-<time>.json; work directories are deleted
unless --keep.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from trackport.domain import Capabilities, Experiment  # noqa: E402
from trackport.kinds import Unit  # noqa: E402
from trackport.selection import resolve_experiments  # noqa: E402
from trackport.stores.base import (  # noqa: E402
    Selection, SinkStore, SourceStore, StoreDescription, UnitWriteResult,
)
from trackport.samples.synthetic_traces import synthetic_trace  # noqa: E402

BASE_MS = 1_700_000_000_000
EXPERIMENT = Experiment("1", "trace-scale", creation_time=BASE_MS, last_update_time=BASE_MS)


# -- the synthetic source -------------------------------------------------------------------------
class SyntheticTraces(SourceStore):
    """One experiment of n traces, made as they are listed; no runs."""

    def __init__(self, n: int, seed: int = 18) -> None:
        self.n, self.seed = n, seed

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="synthetic", uri=f"synthetic:traces-{self.n}")

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

    def iter_traces(self, experiment: Experiment, selection: Selection | None = None) -> Iterator[Unit]:
        rng = random.Random(self.seed)
        return (synthetic_trace(rng, t, EXPERIMENT.experiment_id, base_ms=BASE_MS) for t in range(self.n))


class NullSink(SinkStore):
    """Takes every experiment and unit and keeps nothing (state in a directory of its own)."""

    capabilities = Capabilities.lossless()

    def __init__(self, state: Path) -> None:
        self._state = state

    def describe(self) -> StoreDescription:
        return StoreDescription(kind="null", uri=f"null:{self._state}")

    def state_dir(self) -> Path:
        return self._state

    def put_experiment(self, experiment):
        from trackport.stores.base import ExperimentWriteResult

        return ExperimentWriteResult(experiment.experiment_id, True)

    def find_run(self, run, target_experiment_id):
        return None

    def lookup_run(self, source_run_id, target_experiment_id):
        return None

    def put_run(self, run, target_experiment_id, content):
        raise NotImplementedError

    def put_unit(self, unit, target_experiment_id, content=None):
        return UnitWriteResult(unit.unit_id)


# -- phases (each in a process of its own) ---------------------------------------------------------
def phase(name: str, n: int, a: Path, b: Path) -> None:
    from trackport.opening import open_bundle_sink, open_source
    from trackport.transfer import transfer

    started = time.perf_counter()
    if name == "idle":
        next(SyntheticTraces(1).iter_traces(EXPERIMENT))
        summary = None
    elif name == "export":
        with open_bundle_sink(str(a)) as sink:
            summary = transfer(SyntheticTraces(n), sink, Selection(include_deleted=True))
    elif name == "copy":
        with open_source(str(a)) as source, open_bundle_sink(str(b)) as sink:
            summary = transfer(source, sink, Selection(include_deleted=True))
    elif name == "read":
        with open_source(str(a)) as source, NullSink(b) as sink:
            summary = transfer(source, sink, Selection(include_deleted=True))
    else:
        raise SystemExit(f"no phase {name!r}")
    if summary is not None:
        traces = summary.counts.get("traces", {})
        if summary.failed or traces.get("done", 0) != n:
            raise SystemExit(f"{name}: {traces}, failures {summary.failures[:3]}")
    print(json.dumps({"elapsed_seconds": time.perf_counter() - started}))


def disk_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--copy-up-to", type=int, default=100_000)
    parser.add_argument("--verify-up-to", type=int, default=100_000)
    parser.add_argument("--read-up-to", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--dirs", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args.phase, args.traces[0], *args.dirs)
        return
    sys.path.insert(0, str(HERE))
    from run import measure

    results: dict[str, dict] = {}
    for n in args.traces:
        work = Path(tempfile.mkdtemp(prefix=f"trackport-trace-scale-{n}-", dir=args.work))
        a, b = work / "a", work / "b"
        phases = ["idle", "export", "copy" if n <= args.copy_up_to else "read"]
        if args.read_up_to is not None and n > args.read_up_to:
            phases = phases[:2]
        figures: dict[str, object] = {}
        try:
            for name in phases:
                command = [sys.executable, __file__, "--phase", name, "--traces", str(n), "--dirs", str(a), str(b)]
                m = measure(f"{name} {n}", command)
                if m.returncode != 0:
                    raise SystemExit(f"{name} of {n} traces failed")
                figures[name] = {"wall": m.wall, "cpu": m.cpu, "rss_mb": m.rss_mb, "transfer_s": m.transfer_s}
                print(f"{n:>9,} {name:<7} {m.wall:>8.1f}s wall {m.cpu:>8.1f}s cpu {m.rss_mb:>7.1f} MB", flush=True)
            if n <= args.verify_up_to:
                cli = [sys.executable, "-m", "trackport.cli.main", "verify", str(a), str(b), "--level", "full"]
                m = measure(f"verify {n}", cli)
                figures["verify"] = {"wall": m.wall, "cpu": m.cpu, "rss_mb": m.rss_mb, "returncode": m.returncode}
                print(f"{n:>9,} verify  {m.wall:>8.1f}s wall {m.cpu:>8.1f}s cpu {m.rss_mb:>7.1f} MB rc {m.returncode}", flush=True)
            figures["bundle_bytes"] = disk_bytes(a)
            figures["spans_parquet_bytes"] = (a / "experiments" / "1" / "spans.parquet").stat().st_size
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        idle = figures["idle"]["rss_mb"]
        for name in ("export", "copy", "read"):
            if name in figures:
                figures[name]["rss_over_idle_bytes_per_trace"] = (figures[name]["rss_mb"] - idle) * 2**20 / n
        results[str(n)] = figures
    out = HERE / "results" / f"trace-scale-{'-'.join(map(str, args.traces))}-{int(time.time())}.json"
    out.write_text(json.dumps({"traces": args.traces, "results": results}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
