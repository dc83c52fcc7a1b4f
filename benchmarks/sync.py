"""trackport sync between two real servers: the first sync, a second after under 5% of the
runs changed, and a third with nothing changed, each as its own process; the source behind a
counting proxy, so the requests each sync makes to the source are counted.

    python benchmarks/sync.py --preset small [--workers 8]

The issue's bar: the third sync takes at most a twentieth of the first (wall time, process
start included, and the sync's own time from its --json summary).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from faultproxy import FaultProxy, Faults  # noqa: E402
from run import PRESETS, Workload, build_source_db, measure  # noqa: E402
from servers import MlflowServer, start_all  # noqa: E402


def _change(url: str, changed: int) -> list[str]:
    """Change `changed` runs at the source in four ways; what was done, one line each."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    runs = client.search_runs(["1"], max_results=changed, order_by=["attributes.start_time ASC"])
    done = []
    for i, run in enumerate(runs):
        run_id = run.info.run_id
        if i % 4 == 0:
            client.log_batch(run_id, metrics=[Metric("metric_00", 0.5, 1_800_000_000_000 + s, 1000 + s) for s in range(100)])
            done.append(f"{run_id}: 100 new points")
        elif i % 4 == 1:
            client.set_tag(run_id, "reviewed", "yes")
            done.append(f"{run_id}: new tag")
        elif i % 4 == 2:
            client.update_run(run_id, name=f"renamed-{i}")
            done.append(f"{run_id}: renamed")
        else:
            client.delete_run(run_id)
            done.append(f"{run_id}: deleted")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="small")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--changed", type=int, default=4, help="runs changed before the second sync")
    args = parser.parse_args()
    workload = Workload(*PRESETS[args.preset])
    work = Path(tempfile.mkdtemp(prefix=f"trackport-sync-{args.preset}-"))
    env = {"TRACKPORT_HOME": str(work / "trackport-home")}
    os.environ.update(env)
    build_source_db(workload, work / "source")
    servers = start_all([MlflowServer(work / "source"), MlflowServer(work / "target")])
    proxy = FaultProxy(servers[0].url, Faults(), random.Random(0)).start()
    sync = [sys.executable, "-m", "trackport.cli.main", "sync", proxy.url, servers[1].url, "--json", "--workers", str(args.workers)]
    phases = []
    try:
        for phase in ("first sync", "second sync", "third sync"):
            changes = _change(servers[0].url, args.changed) if phase == "second sync" else []
            before = proxy.counts["forwarded"]
            result = measure(phase, sync, env=env)
            requests = proxy.counts["forwarded"] - before
            phases.append({**vars(result), "source_requests": requests, "changes": changes})
            print(f"{phase:<12}{result.wall:>8.2f}s wall  {result.transfer_s or 0:>8.2f}s sync  {result.rss_mb:>6.0f} MB"
                  f"  {requests:>6} requests to the source  exit {result.returncode}", flush=True)
    finally:
        proxy.stop()
        for server in servers:
            server.stop()
    first, third = phases[0], phases[2]
    ratios = {
        "third / first, wall": third["wall"] / first["wall"],
        "third / first, sync alone": (third["transfer_s"] or 0) / (first["transfer_s"] or 1),
        "third / first, source requests": third["source_requests"] / max(first["source_requests"], 1),
    }
    for name, value in ratios.items():
        print(f"{name:<36}{value:>8.3f}")
    report = {"preset": args.preset, "workload": vars(workload), "workers": args.workers, "phases": phases, "ratios": ratios}
    out = HERE / "results" / f"sync-{args.preset}-{int(time.time())}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
