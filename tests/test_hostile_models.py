"""Hostile bundles holding model units: damaged or malicious logged models, registered models
and versions, imported into a local sqlite store with the real CLI (in process).

Each case damages a fresh copy of a bundle exported from tests/model_memory.py and checks:
the import refuses exactly the damaged unit and the units that depend on it (exit 1,
named in the summary), writes nothing of them and nothing outside the target, imports the
rest; and `bundle verify --level full` reports the same units (verify and import agree).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from model_memory import model_source
from trackport.bundle import verify_bundle
from trackport.bundle.layout import unit_id_from_name
from trackport.cli.main import cli
from trackport.opening import open_bundle_sink
from trackport.stores.base import Selection
from trackport.transfer import transfer

MODEL_DIR = "experiments/1/units/logged_model"
SECRET = b"outside the bundle\n"


@pytest.fixture(scope="module")
def model_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "bundle"
    with open_bundle_sink(str(path)) as sink:
        assert transfer(model_source(), sink, Selection(include_deleted=True)).failed == 0
    return path


def _manifest(bundle: Path) -> dict[str, dict]:
    return {e["path"]: e for e in map(json.loads, (bundle / "manifest.jsonl").read_text().splitlines())}


def _write_manifest(bundle: Path, entries: dict[str, dict]) -> None:
    lines = [json.dumps(entries[p], sort_keys=True, separators=(",", ":")) for p in sorted(entries)]
    (bundle / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def _relist(bundle: Path, rel: str) -> None:
    """List a changed file in the manifest as it is now (so only the deeper checks see it)."""
    entries = _manifest(bundle)
    data = (bundle / rel).read_bytes()
    entries[rel] = {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    _write_manifest(bundle, entries)


def _edit_document(bundle: Path, rel: str, edit: Callable[[dict], None]) -> None:
    doc = json.loads((bundle / rel).read_text())
    edit(doc)
    (bundle / rel).write_text(json.dumps(doc))
    _relist(bundle, rel)


def flipped_model_file(bundle: Path, outside: Path) -> None:
    path = bundle / MODEL_DIR / "m-1111/model.pkl"
    data = bytearray(path.read_bytes())
    data[7] ^= 1
    path.write_bytes(bytes(data))


def file_path_out_of_the_bundle(bundle: Path, outside: Path) -> None:
    def edit(doc):
        doc["files"][0]["path"] = "../../../../outside/secret.txt"
    _edit_document(bundle, f"{MODEL_DIR}/m-1111.json", edit)


def linked_model_file(bundle: Path, outside: Path) -> None:
    target = bundle / MODEL_DIR / "m-1111/model.pkl"
    (outside / "model.pkl").write_bytes(target.read_bytes())
    target.unlink()
    os.symlink(outside / "model.pkl", target)


def missing_model_file(bundle: Path, outside: Path) -> None:
    (bundle / MODEL_DIR / "m-1111/MLmodel").unlink()


def version_with_another_id(bundle: Path, outside: Path) -> None:
    def edit(doc):
        doc["id"] = "churn/9"
    _edit_document(bundle, "units/model_version/churn%2F3.json", edit)


def version_body_against_its_schema(bundle: Path, outside: Path) -> None:
    def edit(doc):
        doc["body"]["version"] = "three"
    _edit_document(bundle, "units/model_version/churn%2F3.json", edit)


def registered_model_not_json(bundle: Path, outside: Path) -> None:
    (bundle / "units/registered_model/churn.json").write_text('{"kind": "registered_model", NaN}')
    _relist(bundle, "units/registered_model/churn.json")


MODEL_AND_ITS_VERSIONS = (("logged_model", "m-1111"), {("model_version", "churn/1"), ("model_version", "churn/3"),
                                                      ("model_version", "churn/4")})
# case -> (damage, the damaged unit, the units that fail with it: they depend on it)
CASES = {
    "flipped model file": (flipped_model_file, *MODEL_AND_ITS_VERSIONS),
    "file path out of the bundle": (file_path_out_of_the_bundle, *MODEL_AND_ITS_VERSIONS),
    "linked model file": (linked_model_file, *MODEL_AND_ITS_VERSIONS),
    "missing model file": (missing_model_file, *MODEL_AND_ITS_VERSIONS),
    "version with another id": (version_with_another_id, ("model_version", "churn/3"), {("model_version", "churn/4")}),
    "version body against its schema": (version_body_against_its_schema, ("model_version", "churn/3"),
                                        {("model_version", "churn/4")}),
    "registered model not JSON": (registered_model_not_json, ("registered_model", "churn"),
                                  MODEL_AND_ITS_VERSIONS[1]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_model_unit_is_refused_alone_and_verify_agrees(case, model_bundle, tmp_path):
    damage, damaged, dependents = CASES[case]
    refused = {damaged} | dependents
    bundle = tmp_path / "bundle"
    shutil.copytree(model_bundle, bundle, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    damage(bundle, outside)
    before = sorted(str(p) for p in outside.rglob("*"))

    report = verify_bundle(bundle, "full")
    reported = {(p.unit[0], unit_id_from_name(p.unit[1])) for p in report.problems if p.unit}
    target = tmp_path / "target.db"
    result = CliRunner().invoke(cli, ["import", str(bundle), f"sqlite:///{target}", "--json"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    failed = {(f["kind"], f["source_id"]) for f in summary["failures"]}
    assert failed == refused, summary["failures"]
    assert reported == {damaged}, report.problems  # the units failing with it are whole
    # Nothing of a refused unit arrived, the others did, and nothing outside changed.
    with sqlite3.connect(target) as con:
        versions = {(n, int(v)) for n, v in con.execute(
            "SELECT name, version FROM model_versions WHERE current_stage != 'Deleted_Internal'")}
    for kind, unit_id in refused:
        if kind == "model_version":
            name, number = unit_id.split("/")
            assert (name, int(number)) not in versions
    assert ("other", 1) in versions
    assert sorted(str(p) for p in outside.rglob("*")) == before and (outside / "secret.txt").read_bytes() == SECRET
    assert summary["counts"]["runs"]["done"] == 4
