"""The trackport bundle, format v1: a directory anyone can read (JSON, Parquet, plain
files), written crash-safely and verifiable against its manifest.

See docs/bundle-format.md for the format itself.
"""
from trackport.bundle.layout import FORMAT_NAME, FORMAT_VERSION
from trackport.bundle.inspect import inspect_bundle, is_bundle
from trackport.bundle.reader import BundleSource
from trackport.bundle.verify import LEVELS, Problem, VerifyReport, verify_bundle
from trackport.bundle.writer import BundleSink

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "BundleSink",
    "BundleSource",
    "LEVELS",
    "Problem",
    "VerifyReport",
    "inspect_bundle",
    "is_bundle",
    "verify_bundle",
]
