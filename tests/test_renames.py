"""Renaming experiments on the way into a target (--rename-experiment, a prefix, a mapping
file): every run lands under the new names, verify proves it with the same options, the same
command again writes nothing, and renames that would merge two experiments are refused."""
from __future__ import annotations

import json
import uuid

from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.opening import open_source
from trackport.samples.sample_store import EXPERIMENT_A, EXPERIMENT_B, SAMPLE_COUNTS
from trackport.stores.base import Selection

EVERYTHING = Selection(include_deleted=True)


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _names(uri: str) -> list[str]:
    with open_source(uri) as store:
        return sorted(e.name for e in store.list_experiments(EVERYTHING))


def test_a_prefix_rename_lands_every_run_under_the_new_names(sample_sqlite, tmp_path):
    target = f"sqlite:///{tmp_path / 'staging.db'}"
    rename = ["--rename-experiment-prefix", "trackport-=staging/", "--rename-experiment", f"{EXPERIMENT_B}=staging/b"]
    result = _run("copy", sample_sqlite, target, "--include-deleted", "--json", *rename)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["runs"]["done"] == SAMPLE_COUNTS["runs"]
    assert _names(target) == ["Default", "staging/b", "staging/sample-a"]  # no old name left
    verified = _run("verify", sample_sqlite, target, "--include-deleted", *rename)
    assert verified.exit_code == 0, verified.output
    assert verified.output.strip().endswith("0 differences")
    # Without the renames, verify finds the experiments missing: it is not a check that cannot fail.
    assert _run("verify", sample_sqlite, target, "--include-deleted").exit_code == 4
    again = _run("copy", sample_sqlite, target, "--include-deleted", "--json", *rename)
    assert again.exit_code == 0 and json.loads(again.stdout)["counts"]["runs"]["done"] == 0, again.output


def test_a_mapping_file_into_a_server(sample_sqlite, target_server, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    mapping = tmp_path / "names.csv"
    mapping.write_text(f"old,new\n{EXPERIMENT_A},a-{suffix}\n{EXPERIMENT_B},b-{suffix}\n")
    result = _run("copy", sample_sqlite, target_server.url, "--rename-file", str(mapping))
    assert result.exit_code == 0, result.output
    assert {f"a-{suffix}", f"b-{suffix}"} <= set(_names(target_server.url))
    as_json = tmp_path / "names.json"
    as_json.write_text(json.dumps({EXPERIMENT_A: f"a-{suffix}", EXPERIMENT_B: f"b-{suffix}"}))
    verified = _run("verify", sample_sqlite, target_server.url, "--rename-file", str(as_json))
    assert verified.exit_code == 0, verified.output


def test_renames_that_merge_or_do_not_parse_are_refused(sample_sqlite, tmp_path):
    target = tmp_path / "t.db"
    merge = _run("copy", sample_sqlite, f"sqlite:///{target}", "--rename-experiment", f"{EXPERIMENT_A}={EXPERIMENT_B}")
    assert merge.exit_code == 3 and "would both be written as" in merge.output, merge.output
    assert not target.exists()
    for args, code in [
        (["--rename-experiment", "no-equals-sign"], 2),
        (["--rename-experiment", "a=b", "--rename-experiment", "a=c"], 2),
        (["--rename-file", str(tmp_path / "missing.csv")], 3),
    ]:
        result = _run("copy", sample_sqlite, f"sqlite:///{target}", *args)
        assert result.exit_code == code, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: "), result.output
    assert not target.exists()
