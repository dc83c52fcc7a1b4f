"""What checking a bundle run before writing it into a server costs (issue 11).

A server cannot take a run back, so before a bundle run is written there its metrics are
decoded and its artifacts hashed (BundleSource.check_run); the write then reads them
again. This measures, in one run on one machine: the time of those checks over a whole
bundle, the import of the same bundle into a real server (which includes them), and
the same import into a local sqlite store (which needs no check), and prints the checks'
share of each.

    python benchmarks/precheck_cost.py [--preset tiny|small] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from run import PRESETS, Workload, WorkloadSource, measure  # noqa: E402
from servers import MlflowServer, start_all  # noqa: E402

from trackport.opening import open_bundle_sink, open_source  # noqa: E402
from trackport.config import TransferConfig  # noqa: E402
from trackport.stores.base import Selection  # noqa: E402
from trackport.transfer import transfer  # noqa: E402

EVERYTHING = Selection(include_deleted=True)


def check_all(bundle: Path) -> float:
    with open_source(str(bundle)) as source:
        runs = [r for e in source.list_experiments(EVERYTHING) for r in source.iter_runs(e, EVERYTHING)]
        started = time.perf_counter()
        for run in runs:
            source.check_run(run)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trackport-precheck-"))
    workload = Workload(*PRESETS[args.preset])
    bundle = work / "bundle"
    with open_bundle_sink(str(bundle)) as sink:
        transfer(WorkloadSource(workload), sink, EVERYTHING, config=TransferConfig(workers=4))
    checks = [check_all(bundle) for _ in range(args.repeat)]
    server = start_all([MlflowServer(work / "server")])[0]
    try:  # once: a second import into the same server would find every run there
        rest = measure("import-rest", ["trackport", "import", str(bundle), server.url, "--json", "--workers", "8"])
    finally:
        server.stop()
    sqlite = [measure("import-sqlite", ["trackport", "import", str(bundle), f"sqlite:///{work / f'{i}.db'}", "--json"]
                      ).transfer_s for i in range(args.repeat)]
    check = statistics.median(checks)
    result = {
        "preset": args.preset,
        "runs": workload.runs,
        "metric_points": workload.points,
        "artifact_bytes": workload.runs * workload.artifact_bytes,
        "check_s": round(check, 3),
        "import_rest_s": round(rest.transfer_s, 3),
        "import_sqlite_s": round(statistics.median(sqlite), 3),
        "check_share_of_rest_import": round(check / rest.transfer_s, 4),
        "check_vs_sqlite_import": round(check / statistics.median(sqlite), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
