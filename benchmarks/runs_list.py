"""`trackport runs list` of N runs with a MIN() filter, on a tracking server and on a local
sqlite store, against MLflow's client doing the same by hand (raw_min_filter.py), measured in
the same run; and what pushing a filter down to the store saves (library, pushdown on/off).

    python benchmarks/runs_list.py [--runs 10000]

Figures are printed and written to benchmarks/results/runs-list-<runs>-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from run import Workload, build_source_db, measure  # noqa: E402
from servers import MlflowServer, start_all  # noqa: E402

KEY, BOUND = "metric_00", 0.01
MIN_FILTER = f"MIN(metrics.{KEY}) <= {BOUND}"
LATEST_FILTER = f"metrics.{KEY} > 0.99"
# The library's listing with pushdown on or off: the runs a filter takes, counted.
PUSHDOWN = """
import sys
from trackport.config import TransferConfig
from trackport.opening import open_source
from trackport.selection import runs_of
from trackport.stores.base import Selection
uri, text, on = sys.argv[1], sys.argv[2], sys.argv[3] == "on"
selection = Selection(filter=text)
with open_source(uri, config=TransferConfig(search_pushdown=on)) as source:
    print(sum(1 for e in source.list_experiments(selection) for _ in runs_of(source, e, selection)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trackport-bench-runs-list-"))
    workload = Workload(runs=args.runs, metrics=3, steps=20, params=5, tags=3, artifact_bytes=1)
    t0 = time.perf_counter()
    db = build_source_db(workload, work / "source")
    print(f"{args.runs} runs built in {time.perf_counter() - t0:.0f}s; work dir {work}", flush=True)
    server = start_all([MlflowServer(work / "source")])[0]
    stores = {"server": server.url, "sqlite": f"sqlite:///{db}"}
    trackport = [sys.executable, "-m", "trackport.cli.main"]
    results, matched = {}, {}
    try:
        for kind, uri in stores.items():
            out = work / f"{kind}.csv"
            phases = {
                f"trackport runs list ({kind})": [*trackport, "runs", "list", uri, "--filter", MIN_FILTER, "--format", "csv", "--output", str(out)],
                f"MLflow client by hand ({kind})": [sys.executable, str(HERE / "raw_min_filter.py"), uri, "benchmark", KEY, str(BOUND), str(work / f"{kind}.raw")],
                f"latest filter, pushdown on ({kind})": [sys.executable, "-c", PUSHDOWN, uri, LATEST_FILTER, "on"],
                f"latest filter, pushdown off ({kind})": [sys.executable, "-c", PUSHDOWN, uri, LATEST_FILTER, "off"],
            }
            for name, command in phases.items():
                result = measure(name, command)
                results[name] = vars(result)
                print(f"  {name:<44}{result.wall:>8.1f}s wall {result.cpu:>7.1f}s cpu {result.rss_mb:>6.0f} MB", flush=True)
            rows = out.read_text().splitlines()[1:]
            raw = [line for line in (work / f"{kind}.raw").read_text().splitlines() if line]
            matched[kind] = {"trackport": len(rows), "by hand": len(raw)}
            assert sorted(r.split(",", 1)[0] for r in rows) == sorted(raw), f"{kind}: trackport and the baseline disagree"
    finally:
        server.stop()
    ratios = {}
    for kind in stores:
        ratios[f"{kind}: runs list / by hand (wall)"] = results[f"trackport runs list ({kind})"]["wall"] / results[f"MLflow client by hand ({kind})"]["wall"]
        ratios[f"{kind}: pushdown on / off (wall)"] = results[f"latest filter, pushdown on ({kind})"]["wall"] / results[f"latest filter, pushdown off ({kind})"]["wall"]
    for name, value in ratios.items():
        print(f"{name:<50}{value:>8.2f}")
    report = {"runs": args.runs, "filter": MIN_FILTER, "matched": matched, "phases": results, "ratios": ratios}
    path = HERE / "results" / f"runs-list-{args.runs}-{int(time.time())}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
