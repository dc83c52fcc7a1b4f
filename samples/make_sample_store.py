"""Build the deterministic sample MLflow store: python samples/make_sample_store.py DIR [--kind sqlite|mlruns]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sample_store import SAMPLE_COUNTS, build_sample_store  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build trackport's sample MLflow store.")
    parser.add_argument("directory", type=Path, help="where to build it (preferably empty)")
    parser.add_argument("--kind", choices=("sqlite", "mlruns"), default="sqlite")
    args = parser.parse_args(argv)
    uri = build_sample_store(args.directory, args.kind)
    print(uri)
    print(SAMPLE_COUNTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
