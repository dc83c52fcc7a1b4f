"""Bundles on S3 against bundles in a local directory, in the same run, beside a raw boto3
upload and download of the same bundle's files (the speed limit of this S3).

    python benchmarks/s3_bundles.py [--preset small] [--workers 4]

S3 is moto in server mode (tests/s3server.py) on this machine: no network latency, so the
figures measure trackport's own cost over the bytes it moves. Every trackport phase is the
`trackport` command in its own process. Phases: export into a directory and into s3://;
`bundle verify --level full` of each; import of each into a new sqlite store (checked
against the source); and boto3's managed transfers of the local bundle's files with 8
threads (upload, download), the raw baseline. The staging copy's disk use after the S3
export is measured (allocated blocks), against the bundle's size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from incremental_backup import build_store  # noqa: E402
from run import PRESETS, Workload  # noqa: E402
from s3server import MotoServer  # noqa: E402

from trackport.opening import open_source  # noqa: E402
from trackport.stores.base import Selection  # noqa: E402
from trackport.transfer.compare import compare_stores  # noqa: E402


def trackport(env: dict, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run(["trackport", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"trackport {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return time.monotonic() - started


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "lock")


def raw_upload(client, bucket: str, root: Path) -> float:
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: client.upload_file(str(p), bucket, f"raw/{p.relative_to(root).as_posix()}"), files_of(root)))
    return time.monotonic() - started


def raw_download(client, bucket: str, into: Path) -> float:
    started = time.monotonic()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="raw/")
            for o in page.get("Contents", ())]

    def one(key: str) -> None:
        target = into / key
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, keys))
    return time.monotonic() - started


def allocated(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def differences(source: str, target: str) -> int:
    expected, actual = open_source(source), open_source(target)
    try:
        return sum(1 for _ in compare_stores(expected, actual, Selection()))
    finally:
        expected.close()
        actual.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="small")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    workload = Workload(*PRESETS[args.preset])
    work = Path(tempfile.mkdtemp(prefix=f"trackport-s3-bundles-{args.preset}-"))
    (work / "src").mkdir()
    src = build_store(workload, work / "src")
    moto = MotoServer(work / "moto").start()
    try:
        env = {**os.environ, **moto.env(), "TRACKPORT_HOME": str(work / "home")}
        bucket = moto.new_bucket()
        url = f"s3://{bucket}/bundle"
        workers = ["--workers", str(args.workers)]
        t = {}
        t["export, directory"] = trackport(env, "export", src, str(work / "bundle"), *workers)
        t["export, s3"] = trackport(env, "export", src, url, *workers)
        t["verify full, directory"] = trackport(env, "bundle", "verify", str(work / "bundle"))
        t["verify full, s3"] = trackport(env, "bundle", "verify", url)
        t["import, directory"] = trackport(env, "import", str(work / "bundle"), f"sqlite:///{work / 'from-dir.db'}", *workers)
        t["import, s3"] = trackport(env, "import", url, f"sqlite:///{work / 'from-s3.db'}", *workers)
        client = moto.client()
        t["raw upload (boto3, 8 threads)"] = raw_upload(client, bucket, work / "bundle")
        t["raw download (boto3, 8 threads)"] = raw_download(client, bucket, work / "raw")
        from trackport.bundle.s3_bundle import staging_root

        os.environ["TRACKPORT_HOME"] = env["TRACKPORT_HOME"]
        staging = staging_root(url)
        bundle_bytes = sum(p.stat().st_size for p in files_of(work / "bundle"))
        result = {
            "preset": args.preset, "runs": workload.runs, "points": workload.points, "workers": args.workers,
            "bundle_bytes": bundle_bytes, "bundle_files": len(files_of(work / "bundle")),
            "staging_allocated_bytes_after_export": allocated(staging / "export"),
            "read_copy_allocated_bytes_after_import": allocated(staging / "read"),
            "seconds": {k: round(v, 2) for k, v in t.items()},
            "ratios": {
                "export s3 / export directory": round(t["export, s3"] / t["export, directory"], 3),
                "import s3 / import directory": round(t["import, s3"] / t["import, directory"], 3),
                "verify s3 / verify directory": round(t["verify full, s3"] / t["verify full, directory"], 3),
                "export s3 / (export directory + raw upload)": round(
                    t["export, s3"] / (t["export, directory"] + t["raw upload (boto3, 8 threads)"]), 3),
            },
            "differences": {"from directory": differences(src, f"sqlite:///{work / 'from-dir.db'}"),
                            "from s3": differences(src, f"sqlite:///{work / 'from-s3.db'}")},
        }
    finally:
        moto.stop()
    print(json.dumps(result, indent=2))
    out = HERE / "results" / f"s3-bundles-{args.preset}-{int(time.time())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    if any(result["differences"].values()):
        raise SystemExit("an import differs from the source")


if __name__ == "__main__":
    main()
