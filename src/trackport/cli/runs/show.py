"""`trackport runs show`: one run's page (trackport.runs.show.RunPage) as text, or as JSON."""
from __future__ import annotations

import json
from typing import Iterable, Iterator

import click

from trackport.cli.running import fail_cleanly
from trackport.cli.runs.group import runs_group
from trackport.cli.runs.listing import human_duration
from trackport.domain import DELETED, ArtifactFile
from trackport.opening import open_source
from trackport.runs.listing import (
    SOURCE_NAME_TAG,
    SOURCE_TYPE_TAG,
    iso_time,
    metric_cell,
)
from trackport.runs.show import (
    ENTRY_POINT_TAG,
    ENVIRONMENT_BYTES,
    GIT_COMMIT_TAG,
    GIT_REPO_TAG,
    NOTE_TAG,
    ModelEntry,
    RunPage,
    run_page,
)

DATASET_CONTEXT_TAG = "mlflow.data.context"
INDENT = "  "


@runs_group.command("show")
@click.argument("source")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@fail_cleanly
def show_command(source, run_id, as_json):
    """Show the run RUN_ID of SOURCE as MLflow's run page does, with how to load its models
    and reproduce it."""
    with open_source(source) as store:
        page = run_page(store, run_id)
    if as_json:
        click.echo(json.dumps(page.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(page_lines(page)))


def page_lines(page: RunPage) -> Iterator[str]:
    run = page.run
    yield f"Run {run.run_id} {run.run_name!r} in experiment {page.experiment_name!r} ({run.experiment_id})"
    status = run.status + (f", deleted {iso_time(run.deleted_time)}".rstrip() if run.lifecycle_stage == DELETED else "")
    yield from _fields({
        "status": status,
        "user": page.user,
        "start": iso_time(run.start_time),
        "end": iso_time(run.end_time),
        "duration": human_duration(page.duration_ms),
        "source": _source(page),
        "entry point": page.tag(ENTRY_POINT_TAG),
        "git commit": page.tag(GIT_COMMIT_TAG),
        "git repo": page.tag(GIT_REPO_TAG),
        "parent run": run.parent_run_id,
        "artifact uri": run.artifact_uri,
    })
    note = page.tag(NOTE_TAG)
    if note:
        yield from _section("Note", ((INDENT + line).rstrip() for line in note.splitlines()))
    yield from _section(f"Params ({len(run.params)})", _fields(dict(sorted(run.params.items()))))
    yield from _section(f"Metrics ({len(page.metrics)})", _metric_lines(page))
    yield from _section(f"Tags ({len(page.user_tags)})", _fields(page.user_tags))
    if page.system_tags:
        yield from _section(f"System tags ({len(page.system_tags)})", _fields(page.system_tags))
    if run.inputs:
        yield from _section(f"Dataset inputs ({len(run.inputs)})", _input_lines(page))
    size = sum(a.size for a in page.artifacts)
    artifacts = _tree(page.artifacts)
    if page.missing_artifact_folder:
        artifacts = iter([f"{INDENT}(no artifact folder at {page.missing_artifact_folder})"])
    yield from _section(f"Artifacts ({len(page.artifacts):,} files, {size:,} bytes)", artifacts)
    yield from _section(f"Models ({len(page.models)})", _model_lines(page))
    for unit in page.unreadable_models:
        yield f"{INDENT}(logged model {unit.source_id} of the experiment could not be read: {unit.reason})"
    yield from _section("Reproduce", _reproduce_lines(page))


def _section(title: str, lines: Iterable[str]) -> Iterator[str]:
    yield ""
    yield title
    yield from lines


def _fields(values: dict[str, str | None]) -> Iterator[str]:
    """name  value, names aligned; fields with no value left out; a multi-line value indented."""
    present = {k: v for k, v in values.items() if v}
    width = max((len(k) for k in present), default=0)
    for key, value in present.items():
        first, *rest = str(value).splitlines() or [""]
        yield f"{INDENT}{key.ljust(width)}  {first}"
        yield from (f"{INDENT}{' ' * width}  {line}" for line in rest)


def _source(page: RunPage) -> str:
    return " ".join(v for v in (page.tag(SOURCE_TYPE_TAG), page.tag(SOURCE_NAME_TAG)) if v)


def _metric_lines(page: RunPage) -> Iterator[str]:
    if not page.metrics:
        return
    rows = [("", "latest", "step", "points", "min", "max")] + [
        (m.key, metric_cell(m.summary.latest), str(m.summary.step), _count(m.summary.points),
         metric_cell(m.summary.min), metric_cell(m.summary.max))
        for m in page.metrics
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        yield (INDENT + "  ".join(cells)).rstrip()


def _count(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def _input_lines(page: RunPage) -> Iterator[str]:
    for dataset in page.run.inputs:
        context = dataset.tags.get(DATASET_CONTEXT_TAG)
        others = ", ".join(f"{k}={v}" for k, v in sorted(dataset.tags.items()) if k != DATASET_CONTEXT_TAG)
        yield f"{INDENT}{dataset.name} (digest {dataset.digest}{', ' + context if context else ''})"
        yield f"{INDENT * 2}source ({dataset.source_type}): {dataset.source}"
        if others:
            yield f"{INDENT * 2}tags: {others}"


def _tree(files: Iterable[ArtifactFile]) -> Iterator[str]:
    """Files sorted by path as a tree: a folder's files come together in that order, so each
    folder is named once, where its first file is."""
    shown: list[str] = []  # the folders of the previous file
    for artifact in files:
        *folders, name = artifact.path.split("/")
        same = 0
        while same < min(len(folders), len(shown)) and folders[same] == shown[same]:
            same += 1
        for depth in range(same, len(folders)):
            yield f"{INDENT * (depth + 1)}{folders[depth]}/"
        shown = folders
        yield f"{INDENT * (len(folders) + 1)}{name}  ({artifact.size:,} bytes)"


def _model_lines(page: RunPage) -> Iterator[str]:
    for model in page.models:
        where = model.model_id if model.model_id else f"at {model.artifact_path}/"
        flavors = f", flavors {', '.join(model.flavors)}" if model.flavors else ""
        yield f"{INDENT}{model.kind} {model.name!r} ({where}{flavors}{', deleted' if model.deleted else ''})"
        snippet = model.load_snippet(page.run.run_id)
        yield f"{INDENT * 2}{snippet if snippet else 'deleted: it cannot be loaded'}"


def _reproduce_lines(page: RunPage) -> Iterator[str]:
    yield from _fields({
        "source": _source(page),
        "git commit": page.tag(GIT_COMMIT_TAG),
        "git repo": page.tag(GIT_REPO_TAG),
        "command": page.reproduce_command(),
    })
    for model in page.models:
        yield from _environment_lines(model)


def _environment_lines(model: ModelEntry) -> Iterator[str]:
    for file in model.environment:
        cut = f", the first {ENVIRONMENT_BYTES:,} shown" if file.truncated else ""
        yield f"{INDENT}{model.name}: {file.path} ({file.size:,} bytes{cut})"
        yield from (INDENT * 2 + line for line in file.text.splitlines())
