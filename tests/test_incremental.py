"""Incremental backups: export --since-bundle writes only what changed, a chain full ->
incremental -> incremental restores the source as it was at the last export, and a missing
or damaged link is named and refused before anything is written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from trackport.bundle import BundleSource, verify_bundle
from trackport.bundle.manifest import write_manifest
from trackport.cli.main import cli
from trackport.opening import open_source
from trackport.stores.base import Selection
from trackport.transfer.compare import compare_stores

ROOT = "trackport-bundle.json"
ALL = Selection(include_deleted=True)


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    return result


def one_line_error(result, *words: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def differences(expected: str, actual: str) -> list[str]:
    a, b = open_source(expected), open_source(actual)
    try:
        return [str(d) for d in compare_stores(a, b, ALL)]
    finally:
        a.close()
        b.close()


def runs_of(bundle: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in bundle.glob("experiments/*/runs/*/run.json")}


def stored_bytes(bundle: Path) -> int:
    """Bytes of run data the bundle stores itself (metrics and artifacts)."""
    return sum(p.stat().st_size for p in bundle.glob("experiments/*/runs/*/**/*") if p.is_file() and p.name != "run.json")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, sample_sqlite):
    """A source store of this module's own (the sample copied by trackport, so its artifacts
    are here too), and the chain full -> inc1 -> inc2 of it, the source changed between."""
    work = tmp_path_factory.mktemp("incremental")
    src = f"sqlite:///{work / 'src' / 'mlflow.db'}"
    (work / "src").mkdir()
    run("copy", sample_sqlite, src, "--include-deleted")
    links = work / "chain"
    links.mkdir()
    run("export", src, str(links / "full"), "--include-deleted")
    client = MlflowClient(tracking_uri=src)
    ids = {r.info.run_name: r.info.run_id for e in client.search_experiments() for r in
           client.search_runs([e.experiment_id], run_view_type=3)}
    # Change 1: more points on one run, a tag on another, one renamed, one deleted.
    for step in range(1000, 1010):
        client.log_metric(ids["parent run"], "loss", 0.01 * step, step=step)
    client.set_tag(ids["child"], "reviewed", "yes")
    client.update_run(ids["killed run"], name="killed run, renamed")
    client.delete_run(ids["grandchild"])
    run("export", src, str(links / "inc1"), "--since-bundle", str(links / "full"), "--include-deleted")
    then = differences(src, str(links / "inc1"))  # the source as inc1 saw it, read through the chain
    # Change 2: a new artifact on one run, the deleted run restored, a run added.
    extra = work / "notes.txt"
    extra.write_text("added later\n")
    client.log_artifact(ids["child"], str(extra))
    client.restore_run(ids["deleted run"])
    experiment = client.get_run(ids["child"]).info.experiment_id
    new = client.create_run(experiment, run_name="added run")
    client.log_metric(new.info.run_id, "acc", 0.5, step=1)
    client.set_terminated(new.info.run_id)
    run("export", src, str(links / "inc2"), "--since-bundle", str(links / "inc1"), "--include-deleted")
    return {"work": work, "src": src, "links": links, "ids": ids, "then": then, "new": new.info.run_id}


def test_the_newest_link_restores_the_source(chain, tmp_path):
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    run("import", str(chain["links"] / "inc2"), target)
    assert differences(chain["src"], target) == []
    assert differences(str(chain["links"] / "inc2"), chain["src"]) == []  # read through the chain
    result = run("verify", chain["src"], str(chain["links"] / "inc2"), "--include-deleted")
    assert "0 differences" in result.output


def test_increments_hold_only_what_changed(chain):
    links, ids = chain["links"], chain["ids"]
    full, inc1, inc2 = (runs_of(links / n) for n in ("full", "inc1", "inc2"))
    assert all("fingerprint" in doc for doc in full.values())  # every export records them
    # inc1: the appended points only, earlier ones referred to; nothing else stored
    loss = inc1[ids["parent run"]]["metrics"]
    assert loss["earlier"] and loss["earlier"][0]["link"] == json.loads((links / "full" / ROOT).read_text())["bundle_id"]
    assert loss["points"] == full[ids["parent run"]]["metrics"]["points"] + 10
    appended = next((links / "inc1").glob(f"experiments/*/runs/{ids['parent run']}/metrics.parquet"))
    import pyarrow.parquet as pq
    assert pq.read_metadata(appended).num_rows == 10
    assert inc1[ids["child"]]["tags"]["reviewed"] == "yes"
    assert all("link" in a for doc in inc1.values() for a in doc["artifacts"])  # no artifact stored again
    assert inc1[ids["grandchild"]]["info"]["lifecycle_stage"] == "deleted"
    # inc2: the new artifact and the new run; the old artifacts of that run are references
    child = {a["path"]: a for a in inc2[ids["child"]]["artifacts"]}
    assert "link" not in child["notes.txt"] and all("link" in a for p, a in child.items() if p != "notes.txt")
    assert inc2[ids["deleted run"]]["info"]["lifecycle_stage"] == "active"
    assert chain["new"] in inc2
    assert stored_bytes(links / "inc1") < stored_bytes(links / "full") / 5
    assert stored_bytes(links / "inc2") < stored_bytes(links / "full") / 5


def test_an_earlier_link_restores_its_own_time(chain, tmp_path):
    target = f"sqlite:///{tmp_path / 'then.db'}"
    assert chain["then"] == []
    run("import", str(chain["links"] / "inc1"), target)
    assert differences(str(chain["links"] / "inc1"), target) == []


def test_bundle_verify_checks_the_whole_chain(chain):
    report = verify_bundle(chain["links"] / "inc2", "full")
    assert report.ok, report.problems
    assert report.files_checked > len(list((chain["links"] / "inc2").rglob("*.json")))  # links counted too
    assert "0 problems" in run("bundle", "verify", str(chain["links"] / "inc2")).output


@pytest.fixture
def copied(chain, tmp_path) -> Path:
    shutil.copytree(chain["links"], tmp_path / "chain")
    return tmp_path / "chain"


def test_a_missing_link_is_named_and_refused(copied, tmp_path):
    shutil.rmtree(copied / "full")
    result = run("bundle", "verify", str(copied / "inc2"), code=4)
    named = [line for line in result.output.splitlines() if "link 2 of the chain" in line]
    assert len(named) == 1 and "full" in named[0] and "is missing" in named[0]
    target = tmp_path / "t.db"
    one_line_error(run("import", str(copied / "inc2"), f"sqlite:///{target}", code=3), "full", "missing")
    assert not target.exists()


def test_a_damaged_link_is_named_and_refused(copied, tmp_path):
    artifact = next(p for p in (copied / "full").glob("experiments/*/runs/*/artifacts/**/*") if p.is_file())
    artifact.write_bytes(artifact.read_bytes() + b"!")
    result = run("bundle", "verify", str(copied / "inc2"), code=4)
    named = [line for line in result.output.splitlines() if "is damaged" in line]
    assert len(named) == 1 and str(copied / "full") in named[0] and artifact.name in named[0]
    target = tmp_path / "t.db"
    one_line_error(run("import", str(copied / "inc2"), f"sqlite:///{target}", code=3), "full", "damaged")
    assert not target.exists()


def test_a_link_replaced_or_changed_is_refused(copied, tmp_path):
    root = json.loads((copied / "inc1" / ROOT).read_text())
    root["bundle_id"] = "0" * 32
    (copied / "inc1" / ROOT).write_text(json.dumps(root))
    write_manifest(copied / "inc1")
    with pytest.raises(Exception, match="another bundle"):
        BundleSource(copied / "inc2")
    root["previous"]["path"] = "../../etc"  # a name, never a path
    (copied / "inc2" / ROOT).write_text(json.dumps(root))
    write_manifest(copied / "inc2")
    assert not verify_bundle(copied / "inc2").ok
    one_line_error(run("import", str(copied / "inc2"), f"sqlite:///{tmp_path / 't.db'}", code=3))
    assert not (tmp_path / "t.db").exists()


def test_a_link_behind_a_symbolic_link_or_a_foreign_record_is_refused(copied, tmp_path):
    (copied / "elsewhere").mkdir()
    (copied / "full").rename(copied / "elsewhere" / "full")
    (copied / "full").symlink_to(copied / "elsewhere" / "full")
    one_line_error(run("import", str(copied / "inc1"), f"sqlite:///{tmp_path / 't.db'}", code=3), "symbolic link")
    (copied / "full").unlink()
    (copied / "elsewhere" / "full").rename(copied / "full")
    # a record naming a bundle that is no link of the chain: that run is refused, nothing else
    path = next((copied / "inc1").glob("experiments/*/runs/*/run.json"))
    doc = json.loads(path.read_text())
    doc["artifacts"] = [dict(a, link="f" * 32) for a in doc["artifacts"]] or doc["artifacts"]
    doc["metrics"] = doc["metrics"] and dict(doc["metrics"], link="f" * 32)
    path.write_text(json.dumps(doc))
    write_manifest(copied / "inc1")
    problems = verify_bundle(copied / "inc1").problems
    assert problems and all("no earlier link" in p.message for p in problems)


def test_the_same_increment_twice_and_bad_previous_leave_nothing(chain, tmp_path):
    src, links = chain["src"], tmp_path / "links"
    shutil.copytree(chain["links"] / "full", links / "full")
    for _ in range(2):
        result = run("export", src, str(links / "inc"), "--since-bundle", str(links / "full"), "--include-deleted", "--json")
    assert json.loads(result.stdout)["counts"]["runs"]["failed"] == 0
    assert verify_bundle(links / "inc").ok
    restored = f"sqlite:///{tmp_path / 'r.db'}"
    run("import", str(links / "inc"), restored)
    assert differences(src, restored) == []
    # PREVIOUS missing, in another directory, of another source: refused, nothing made
    for previous, words in ((links / "nowhere", "nowhere"), (chain["links"] / "full", "side by side")):
        one_line_error(run("export", src, str(links / "bad"), "--since-bundle", str(previous), code=3), *words)
        assert not (links / "bad").exists()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    run("import", str(links / "full"), other, "--experiment", "1")
    one_line_error(run("export", other, str(links / "bad"), "--since-bundle", str(links / "full"), code=3), "same source")
    assert not (links / "bad").exists()
