"""Incremental backups: a full export of a sqlite store, then two increments after changing
fewer than 5% of its runs; the bytes of each link, their ratios to the full bundle, the
times, and a restore of the newest link checked against the source.

    python benchmarks/incremental_backup.py [--preset small] [--workers 4]

Each round changes 4 runs of the 100 of the "small" preset (10 metrics x 1000 steps, 1 MB
artifact each): 100 new points on one metric of one run, a tag on another, a new 10 kB
artifact on a third, a fourth deleted. Exports run as the `trackport` command does (one
process each). Figures are printed and written to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from run import PRESETS, Workload, WorkloadSource  # noqa: E402  (benchmarks/run.py)

from trackport.config import TransferConfig
from trackport.opening import open_source
from trackport.stores.base import Selection
from trackport.stores.sqlite.store import SqliteStore
from trackport.transfer import transfer
from trackport.transfer.compare import compare_stores

HERE = Path(__file__).resolve().parent


def build_store(workload: Workload, directory: Path) -> str:
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    store = SqliteStore(uri, create=True, artifact_root=str(directory / "mlartifacts"))
    summary = transfer(WorkloadSource(workload), store, Selection(), config=TransferConfig(workers=2))
    store.close()
    assert summary.failed == 0, summary.failures
    return uri


def trackport(*args: str) -> float:
    started = time.monotonic()
    done = subprocess.run(["trackport", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"trackport {' '.join(args)} failed: {done.stderr.strip()}")
    return time.monotonic() - started


def size(path: Path) -> dict:
    files = [p for p in path.rglob("*") if p.is_file()]
    data = [p for p in files if "/runs/" in str(p) and p.name != "run.json"]
    return {"bytes": sum(p.stat().st_size for p in files), "files": len(files),
            "run_data_bytes": sum(p.stat().st_size for p in data)}


def change(uri: str, runs: list[str], work: Path, round_: int) -> list[str]:
    """4 runs changed: points appended, a tag, a new artifact, a deletion."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    appended, tagged, artifact, deleted = runs
    for step in range(1000, 1100):
        client.log_metric(appended, "metric_00", step / 1000, timestamp=1_800_000_000_000 + step, step=step)
    client.set_tag(tagged, "reviewed", f"round {round_}")
    extra = work / f"notes-{round_}.bin"
    extra.write_bytes(os.urandom(10_000))
    client.log_artifact(artifact, str(extra), "notes")
    client.delete_run(deleted)
    return [f"points appended to {appended}", f"tag on {tagged}", f"artifact added to {artifact}", f"{deleted} deleted"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="small")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    workload = Workload(*PRESETS[args.preset])
    work = Path(tempfile.mkdtemp(prefix=f"trackport-incremental-{args.preset}-"))
    (work / "src").mkdir()
    started = time.monotonic()
    src = build_store(workload, work / "src")
    print(f"workload {args.preset}: {workload.runs} runs, {workload.points:,} points; source built in "
          f"{time.monotonic() - started:.1f} s ({work})", flush=True)
    chain = work / "chain"
    workers = ["--workers", str(args.workers)]
    links = [("full", None)]
    times = {"full": trackport("export", src, str(chain / "full"), *workers)}
    run_ids = [f"{i:032x}" for i in range(workload.runs)]
    changes = {}
    for n, previous in ((1, "full"), (2, "inc1")):
        name = f"inc{n}"
        changes[name] = change(src, run_ids[4 * n: 4 * n + 4], work, n)
        times[name] = trackport("export", src, str(chain / name), "--since-bundle", str(chain / previous), *workers)
        links.append((name, previous))
    times["verify inc2 (whole chain, full)"] = trackport("bundle", "verify", str(chain / "inc2"))
    restored = f"sqlite:///{work / 'restored.db'}"
    times["import inc2"] = trackport("import", str(chain / "inc2"), restored, *workers)
    expected, actual = open_source(src), open_source(restored)
    differences = [str(d) for d in compare_stores(expected, actual, Selection())]
    expected.close()
    actual.close()
    sizes = {name: size(chain / name) for name, _ in links}
    full = sizes["full"]["bytes"]
    result = {
        "preset": args.preset, "runs": workload.runs, "points": workload.points, "workers": args.workers,
        "changed_runs_per_increment": 4, "changes": changes,
        "links": {name: dict(sizes[name], ratio_to_full=round(sizes[name]["bytes"] / full, 5), previous=prev,
                             export_seconds=round(times[name], 2)) for name, prev in links},
        "times_seconds": {k: round(v, 2) for k, v in times.items()},
        "restore_differences": len(differences),
    }
    for name, prev in links:
        s = result["links"][name]
        print(f"{name:5} {s['bytes']:>12,} bytes  {s['files']:>5} files  ratio {s['ratio_to_full']:.4%}  "
              f"export {s['export_seconds']:.2f} s")
    print(f"verify inc2 (chain): {times['verify inc2 (whole chain, full)']:.2f} s; import inc2: "
          f"{times['import inc2']:.2f} s; differences after restore: {len(differences)}")
    out = HERE / "results" / f"incremental-backup-{args.preset}-{int(time.time())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    if differences or any(result["links"][n]["ratio_to_full"] >= 0.05 for n in ("inc1", "inc2")):
        raise SystemExit("an increment is 5% of the full bundle or more, or the restore differs")


if __name__ == "__main__":
    main()
