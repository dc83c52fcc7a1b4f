"""The demo: build the sample store, export it to a bundle, check the bundle, import it
into a fresh local store and compare that field by field with the sample. It returns
what each step found; the CLI (`trackport demo`) shows it."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from trackport.bundle import verify_bundle
from trackport.bundle.verify import VerifyReport
from trackport.config import DEFAULT, TransferConfig
from trackport.opening import open_bundle_sink, open_bundle_source, open_sink, open_source
from trackport.stores.base import Selection
from trackport.transfer import Summary, transfer
from trackport.transfer.engine import ProgressCallback


@dataclass
class DemoResult:
    source: str  # the sample store's URI
    bundle: Path
    target: str  # the URI of the store the bundle was imported into
    exported: Summary
    bundle_report: VerifyReport  # `bundle verify --level full` of the export
    imported: Summary
    differences: list[str]  # between the sample and the imported store, at level full

    @property
    def failed(self) -> int:
        """Units that failed in the export or the import."""
        return self.exported.failed + self.imported.failed

    @property
    def problems(self) -> int:
        """Damaged bundle files plus differences: what a lossless round trip has none of."""
        return len(self.bundle_report.problems) + len(self.differences)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "bundle": str(self.bundle),
            "target": self.target,
            "export": self.exported.to_json(),
            "bundle_problems": [f"{p.path}: {p.message}" for p in self.bundle_report.problems],
            "import": self.imported.to_json(),
            "differences": self.differences,
        }


def run_demo(
    workdir: Path | None = None,
    *,
    config: TransferConfig = DEFAULT,
    on_progress: ProgressCallback | None = None,
) -> DemoResult:
    """Run the round trip in workdir (default: a new temporary directory). on_progress
    follows the export, then the import (each with a summary of its own)."""
    from trackport.samples.sample_store import build_sample_store
    from trackport.transfer.compare import compare_stores

    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="trackport-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    source_uri = build_sample_store(root / "source")
    bundle = root / "bundle"
    target_uri = f"sqlite:///{root / 'target' / 'mlflow.db'}"
    # The whole sample, deleted units included: the round trip must keep them too.
    everything = Selection(include_deleted=True)

    with open_source(source_uri, config=config) as source, open_bundle_sink(str(bundle), config=config) as sink:
        exported = transfer(source, sink, everything, config=config, on_progress=on_progress)
    report = verify_bundle(bundle, "full")
    with open_bundle_source(str(bundle), config=config) as source, open_sink(target_uri, config=config) as sink:
        imported = transfer(source, sink, everything, config=config, on_progress=on_progress)
    with open_source(source_uri, config=config) as expected, open_source(target_uri, config=config) as actual:
        differences = [str(d) for d in compare_stores(expected, actual, everything, level="full")]
    return DemoResult(source_uri, bundle, target_uri, exported, report, imported, differences)
