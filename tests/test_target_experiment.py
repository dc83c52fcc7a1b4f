"""Cross-environment copies (issue 15): a prefix rename into a tracking server, every selected
run into one experiment (--target-experiment), registered models and prompts under other names
(--rename-model, --rename-model-prefix, a mapping file), and --since. Each copy is checked with
`trackport verify` given the same options, and a verify without them fails, so the check can fail."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from trackport.cli.main import cli
from trackport.opening import open_source
from trackport.samples.sample_store import BASE_TIME, EXPERIMENT_A, EXPERIMENT_B, SAMPLE_COUNTS
from trackport.stores.base import Selection

EVERYTHING = Selection(include_deleted=True)


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _ok(*args: str):
    result = _run(*args)
    assert result.exit_code == 0, result.output
    return result


def _runs_by_experiment(uri: str) -> dict[str, list[str]]:
    with open_source(uri) as store:
        return {
            e.name: sorted(r.run_name for r in store.iter_runs(e, EVERYTHING))
            for e in store.list_experiments(EVERYTHING)
        }


def _counts(result) -> dict:
    return json.loads(result.stdout)["counts"]


# -- experiments ---------------------------------------------------------------------------


def test_a_prod_to_staging_prefix_rename_into_a_server(sample_sqlite, target_server):
    prefix = f"staging-{uuid.uuid4().hex[:8]}/"
    rename = ("--rename-experiment-prefix", f"trackport={prefix}trackport", "--include-deleted")
    copied = _ok("copy", sample_sqlite, target_server.url, "--json", *rename)
    assert _counts(copied)["runs"]["done"] == SAMPLE_COUNTS["runs"]
    held = _runs_by_experiment(target_server.url)
    source = _runs_by_experiment(sample_sqlite)
    for name in (EXPERIMENT_A, EXPERIMENT_B):  # every run under the new name
        assert held[prefix + name] == source[name]
    verified = _ok("verify", sample_sqlite, target_server.url, *rename)
    assert verified.output.strip().endswith("0 differences")


def test_target_experiment_takes_the_runs_of_two_experiments(sample_sqlite, tmp_path):
    target = f"sqlite:///{tmp_path / 'one.db'}"
    merge = ("--include-deleted", "--target-experiment", "all-in-one")
    copied = _ok("copy", sample_sqlite, target, "--json", *merge)
    assert _counts(copied)["runs"]["done"] == SAMPLE_COUNTS["runs"]
    source = _runs_by_experiment(sample_sqlite)
    held = _runs_by_experiment(target)
    assert held["all-in-one"] == sorted(source[EXPERIMENT_A] + source[EXPERIMENT_B])
    assert set(held) == {"Default", "all-in-one"}
    with open_source(target) as store:  # no source experiment's tags: it is a copy of neither
        merged = next(e for e in store.list_experiments(EVERYTHING) if e.name == "all-in-one")
        assert "team" not in merged.tags and merged.lifecycle_stage == "active"
    idmap = _ok("idmap", target, "--kind", "experiment", "--format", "json")
    targets = {e["source_id"]: e["target_id"] for e in json.loads(idmap.output)}
    assert len(targets) == 3 and len(set(targets.values())) == 1  # each source experiment mapped to the one
    verified = _ok("verify", sample_sqlite, target, *merge)
    assert verified.output.strip().endswith("0 differences")
    assert _run("verify", sample_sqlite, target, "--include-deleted").exit_code == 4
    again = _ok("copy", sample_sqlite, target, "--json", *merge)
    assert _counts(again)["runs"]["done"] == 0 and _counts(again)["runs"]["skipped"] == SAMPLE_COUNTS["runs"]


# -- registered models and prompts ----------------------------------------------------------


@pytest.fixture(scope="module")
def model_sample(tmp_path_factory):
    """MLflow 3's model objects (samples/model_store.py: churn, churn2, prompt greet). Read it only."""
    from trackport.samples.model_store import build_model_sample

    return build_model_sample(f"sqlite:///{tmp_path_factory.mktemp('models') / 'mlflow.db'}")


def _versions(uri: str, name: str) -> list[int]:
    """The active version numbers of a registered model or prompt, as MLflow's client reads them."""
    from mlflow import MlflowClient

    return sorted(int(v.version) for v in MlflowClient(uri).search_model_versions(f"name = '{name}'"))


def _names(uri: str) -> set[str]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return {m.name for m in client.search_registered_models()} | {p.name for p in client.search_prompts()}


def test_rename_model_writes_models_versions_and_aliases_under_the_new_names(model_sample, tmp_path):
    target = f"sqlite:///{tmp_path / 'staging.db'}"
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"models": {"greet": "greeting"}}))
    rename = ("--include-deleted", "--rename-model-prefix", "churn=staging-churn", "--rename-file", str(mapping))
    copied = _ok("copy", model_sample.uri, target, "--json", *rename)
    assert _counts(copied)["model_versions"]["done"] == 6 and _counts(copied)["registered_models"]["done"] == 3
    assert _names(target) == {"staging-churn", "staging-churn2", "greeting"}
    assert _versions(target, "staging-churn") == [1, 3, 4]  # numbers kept, the deleted 2 a gap
    from mlflow import MlflowClient

    client = MlflowClient(target)
    assert str(client.get_model_version_by_alias("staging-churn", "champion").version) == "3"
    prompt = client.get_prompt_version_by_alias("greeting", "production")  # a prompt still, alias and all
    assert prompt.template == "Hello {{name}}" and str(prompt.version) == "1"
    idmap = json.loads(_ok("idmap", target, "--kind", "model_version", "--format", "json").output)
    assert {"kind": "model_version", "source_id": "churn/3", "target_id": "staging-churn/3"} in idmap
    verified = _ok("verify", model_sample.uri, target, *rename)
    assert verified.output.strip().endswith("0 differences")
    plain = _run("verify", model_sample.uri, target, "--include-deleted")
    assert plain.exit_code == 4 and "registered_model 'churn': missing" in plain.output
    again = _ok("copy", model_sample.uri, target, "--json", *rename)
    assert _counts(again)["model_versions"]["done"] == 0 and _counts(again)["registered_models"]["done"] == 0


def test_renamed_models_into_a_server(model_sample, target_server):
    from mlflow import MlflowClient

    suffix = uuid.uuid4().hex[:8]
    rename = (
        "--include-deleted", "--rename-experiment", f"trackport-models=models-{suffix}",
        "--rename-model", f"churn=churn-{suffix}", "--rename-model", f"churn2=churn2-{suffix}",
        "--rename-model", f"greet=greet-{suffix}",
    )
    copied = _ok("copy", model_sample.uri, target_server.url, "--json", *rename)
    assert _counts(copied)["model_versions"]["failed"] == 0, copied.output
    assert _versions(target_server.url, f"churn-{suffix}") == [1, 3, 4]
    assert MlflowClient(target_server.url).get_prompt_version(f"greet-{suffix}", 2).template == "Hi {{name}}!"
    verified = _ok("verify", model_sample.uri, target_server.url, *rename)
    assert verified.output.strip().endswith("0 differences")


def test_a_model_merge_is_refused_before_writing(model_sample, tmp_path):
    target = tmp_path / "t.db"
    merge = _run("copy", model_sample.uri, f"sqlite:///{target}", "--rename-model", "churn2=churn")
    assert merge.exit_code == 3 and "would both be written as 'churn'" in merge.output, merge.output
    prefix = _run("copy", model_sample.uri, f"sqlite:///{target}", "--rename-model-prefix", "churn2=c", "--rename-model", "churn=c")
    assert prefix.exit_code == 3, prefix.output
    assert not target.exists()


# -- --since ---------------------------------------------------------------------------------

T = BASE_TIME + 1_000_000  # the --since of the tests below


@pytest.fixture(scope="module")
def since_store(tmp_path_factory) -> str:
    """Runs whose times fall on either side of T, made with MLflow's client."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('since') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("since", artifact_location=(Path(uri[10:]).parent / "a").as_uri())

    def run(name: str, start: int, end: int | None = None, points: tuple[tuple[int, int], ...] = ()) -> None:
        run_id = client.create_run(exp, start_time=start, run_name=name).info.run_id
        for step, timestamp in points:
            client.log_metric(run_id, "loss", 1.0 / (step + 1), timestamp=timestamp, step=step)
        if end is not None:
            client.set_terminated(run_id, "FINISHED", end_time=end)

    run("old", BASE_TIME, BASE_TIME + 10, ((0, BASE_TIME + 5),))
    run("late point", BASE_TIME, BASE_TIME + 10, ((0, BASE_TIME + 5), (1, T + 5)))  # old start, a new point
    run("ended late", BASE_TIME, T + 1)
    run("new", T)
    run("early point only", BASE_TIME, None, ((1, BASE_TIME + 5), (0, T + 9)))  # the latest point (step 1) is old
    return uri


def test_since_takes_runs_started_or_changed_after_it(since_store, tmp_path):
    listed = _ok("runs", "list", since_store, "--since", str(T), "--format", "json")
    names = sorted(json.loads(line)["name"] for line in listed.output.splitlines())
    assert names == ["ended late", "late point", "new"]
    iso = _ok("runs", "list", since_store, "--since", "2023-11-14T22:13:20Z", "--format", "json")  # BASE_TIME
    assert len(iso.output.splitlines()) == 5
    target = f"sqlite:///{tmp_path / 't.db'}"
    copied = _ok("copy", since_store, target, "--since", str(T), "--json")
    assert _counts(copied)["runs"]["done"] == 3
    assert _runs_by_experiment(target)["since"] == ["ended late", "late point", "new"]
    assert _ok("verify", since_store, target, "--since", str(T)).output.strip().endswith("0 differences")
    assert _run("verify", since_store, target).exit_code == 4


# -- bad values ------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--since", "yesterday"],
    ["--target-experiment", ""],
    ["--target-experiment", "x", "--rename-experiment", "a=b"],
    ["--target-experiment", "x", "--rename-experiment-prefix", "a=b"],
    ["--rename-model", "no-equals"],
    ["--rename-model-prefix", "=x"],
    ["--rename-model", "a=b", "--rename-model", "a=c"],
    ["--since", "0", "--model", "churn"],
])
def test_bad_values_are_usage_errors_in_one_line(sample_sqlite, tmp_path, args):
    target = tmp_path / "t.db"
    result = _run("copy", sample_sqlite, f"sqlite:///{target}", *args)
    assert result.exit_code == 2, (args, result.output)
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: "), result.output
    assert not target.exists()


def test_a_mapping_file_with_experiments_contradicts_target_experiment(sample_sqlite, tmp_path):
    mapping = tmp_path / "names.csv"
    mapping.write_text(f"old,new,kind\n{EXPERIMENT_A},a,experiment\nchurn,c,model\n")
    result = _run("copy", sample_sqlite, f"sqlite:///{tmp_path / 't.db'}", "--rename-file", str(mapping), "--target-experiment", "x")
    assert result.exit_code == 2 and "--target-experiment" in result.output, result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("old,new,kind\na,b,dataset\n")
    result = _run("copy", sample_sqlite, f"sqlite:///{tmp_path / 't.db'}", "--rename-file", str(bad))
    assert result.exit_code == 3 and "line 2" in result.output, result.output
