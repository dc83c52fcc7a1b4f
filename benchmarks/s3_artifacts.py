"""Artifacts of a server whose --artifacts-destination is S3, read through the server's
artifact proxy against read directly from the bucket (docs/s3-artifacts.md), in the same run.

    python benchmarks/s3_artifacts.py --preset small [--workers 8]

S3 is moto in server mode (tests/s3server.py) on this machine; the tracking server is a real
`mlflow server` behind a counting proxy (tests/faultproxy.py), so the requests reaching its
artifact proxy are counted per phase. Phases, each its own process:

- export, proxy / export, direct: `trackport export` of the whole preset into a bundle,
  without and with ?artifacts_destination=s3://... on the server URL;
- artifacts, proxy / artifacts, direct: every run's artifacts listed and read through
  (trackport's RestSource, `--workers` threads), the artifact path alone.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

ARTIFACTS = "/api/2.0/mlflow-artifacts/"
PREFIX = "mlartifacts"


def read_artifacts(uri: str, workers: int) -> None:
    """Every artifact of every run of the server at uri, read through; prints the figures."""
    from trackport.opening import open_source
    from trackport.stores.base import Selection

    started = time.perf_counter()
    with open_source(uri) as source:
        runs = [run for exp in source.list_experiments(Selection()) for run in source.iter_runs(exp, Selection())]

        def one(run) -> tuple[int, int]:
            files = size = 0
            for artifact in source.list_artifacts(run):
                with source.open_artifact(run, artifact.path) as stream:
                    while chunk := stream.read(1 << 20):
                        size += len(chunk)
                files += 1
            return files, size

        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(one, runs))
        notes = sum(len(source.unit_notes(run)) for run in runs)
    print(json.dumps({"elapsed_seconds": round(time.perf_counter() - started, 3), "runs": len(runs),
                      "artifact_files": sum(f for f, _ in done), "artifact_bytes": sum(b for _, b in done),
                      "fallback_notes": notes}))


def _upload(moto, bucket: str, root: Path) -> int:
    client = moto.client()
    count = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{PREFIX}/{path.relative_to(root).as_posix()}")
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--read-artifacts", metavar="URI", help=argparse.SUPPRESS)  # a phase's own process
    args = parser.parse_args()
    if args.read_artifacts:
        read_artifacts(args.read_artifacts, args.workers)
        return

    from faultproxy import FaultProxy, Faults
    from run import PRESETS, Workload, build_source_db, measure
    from s3server import MotoServer
    from servers import MlflowServer

    workload = Workload(*PRESETS[args.preset])
    work = Path(tempfile.mkdtemp(prefix=f"trackport-s3-artifacts-{args.preset}-"))
    env = {"TRACKPORT_HOME": str(work / "trackport-home")}
    os.environ.update(env)
    moto = MotoServer(work / "moto").start()
    server = proxy = None
    try:
        bucket = moto.new_bucket()
        build_source_db(workload, work / "source")
        uploaded = _upload(moto, bucket, work / "source" / "mlartifacts")
        destination = f"s3://{bucket}/{PREFIX}"
        server = MlflowServer(work / "source", artifacts_destination=destination, extra_env=moto.env()).start().wait_ready()
        proxy = FaultProxy(server.url, Faults(), random.Random(0)).start()
        env.update(moto.env())
        direct = f"{proxy.url}?artifacts_destination={destination}"
        commands = {
            "export, proxy": ["trackport", "export", proxy.url, str(work / "bundle-proxy"), "--json", "--workers", str(args.workers)],
            "export, direct": ["trackport", "export", direct, str(work / "bundle-direct"), "--json", "--workers", str(args.workers)],
            "artifacts, proxy": [sys.executable, __file__, "--read-artifacts", proxy.url, "--workers", str(args.workers)],
            "artifacts, direct": [sys.executable, __file__, "--read-artifacts", direct, "--workers", str(args.workers)],
        }
        phases = []
        for phase, command in commands.items():
            proxy.reset_paths()
            result = measure(phase, command, env=env)
            through = proxy.requests_to(ARTIFACTS)
            phases.append({**vars(result), "artifact_proxy_requests": through, "server_requests": proxy.requests_to("/")})
            print(f"{phase:<18}{result.wall:>8.2f}s wall  {result.transfer_s or 0:>8.2f}s own  {result.rss_mb:>6.0f} MB"
                  f"  {through:>5} artifact-proxy requests  exit {result.returncode}", flush=True)
    finally:
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server.stop()
        moto.stop()
    by = {p["phase"]: p for p in phases}
    ratios = {
        "export direct / proxy, wall": by["export, direct"]["wall"] / by["export, proxy"]["wall"],
        "export direct / proxy, export alone": (by["export, direct"]["transfer_s"] or 0) / (by["export, proxy"]["transfer_s"] or 1),
        "artifacts direct / proxy, read alone": (by["artifacts, direct"]["transfer_s"] or 0) / (by["artifacts, proxy"]["transfer_s"] or 1),
        "artifacts direct / proxy, wall": by["artifacts, direct"]["wall"] / by["artifacts, proxy"]["wall"],
    }
    for name, value in ratios.items():
        print(f"{name:<40}{value:>8.3f}")
    report = {"preset": args.preset, "workload": vars(workload), "workers": args.workers, "files_in_s3": uploaded,
              "s3": "moto (server mode) on this machine", "phases": phases, "ratios": ratios}
    out = HERE / "results" / f"s3-artifacts-{args.preset}-{int(time.time())}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
