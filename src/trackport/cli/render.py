"""How the CLI shows things: the summary table, status, a bundle's description, one-line
errors and notices. Live progress is in cli/progress.py."""
from __future__ import annotations

import click

from trackport.kinds import kind
from trackport.transfer import Summary
from trackport.transfer.status import TransferStatus
from trackport.transfer.summary import OUTCOMES

# Measures that count data rather than units, shown after the unit kinds, in this order.
# Every other measure in a summary is a kind's plural ("experiments", "runs", "notes"),
# so a new kind needs nothing here.
_DATA_MEASURES = ("metric_points", "artifact_files", "artifact_bytes")


def error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def notice(message: str) -> None:
    click.echo(f"note: {message}", err=True)


def plural(n: int, noun: str) -> str:
    """'1 difference', '2 differences': for the nouns that are not unit kinds (those go
    through trackport.kinds, which knows each kind's own plural)."""
    return f"{n:,} {noun if n == 1 else noun + 's'}"


def _label(measure: str) -> str:
    return measure.replace("_", " ")


def _measures(counts: dict) -> list[str]:
    """The unit kinds in the summary's own order, then the data measures: the set is open
    (a new kind adds a row), so nothing here lists the kinds."""
    kinds = [m for m in counts if m not in _DATA_MEASURES]
    return kinds + [m for m in _DATA_MEASURES if m in counts]


def _outcome_header(width: int) -> str:
    return " " * width + "".join(f"{o.replace('_', ' '):>14}" for o in OUTCOMES)


def summary_table(summary: Summary) -> str:
    measures = _measures(summary.counts)
    width = max([len(_label(m)) for m in measures] + [len("experiments")])
    lines = [_outcome_header(width)]
    for measure in measures:
        counts = summary.counts[measure]
        lines.append(f"{_label(measure):<{width}}" + "".join(f"{counts.get(o, 0):>14,}" for o in OUTCOMES))
    for failure in summary.failures:
        lines.append(f"FAILED {failure.kind} {failure.name!r} ({failure.source_id}): {failure.reason}")
    for (unit_kind, reason), n in sorted(summary.not_selected.items()):
        lines.append(f"NOT SELECTED {kind(unit_kind).count(n)}: {reason}")
    for loss in summary.losses:
        lines.append(f"LOSS {loss}")
    lines.append(f"in {summary.elapsed_seconds:,.1f} s")
    return "\n".join(lines)


def status_text(status: TransferStatus) -> str:
    lines = [f"ledger      {status.state_dir}", f"last entry  {status.last_activity}"]
    names = list(status.counts)  # in the status's own order: experiments, runs, then the others
    width = max([len(kind(k).plural) for k in names] + [len("experiments")]) + 1
    lines.append(_outcome_header(width))
    for name in names:
        outcomes = status.counts[name]
        lines.append(f"{_label(kind(name).plural):<{width}}" + "".join(f"{outcomes.get(o, 0):>14,}" for o in OUTCOMES))
    for line in status.failed:
        lines.append(f"FAILED {line['kind']} {line['name']!r} ({line['source_id']}): {line['reason']}")
    last = status.last_transfer
    if last is not None:
        source = last.source.get("uri", "?")
        if last.ended == "finished":
            lines.append(f"last transfer from {source}: started {last.started_at}, finished {last.ended_at}")
        else:
            state = (
                f"running now ({last.running})" if last.running
                else f"stopped at {last.ended_at}: {last.reason}" if last.ended == "stopped"
                else "did not finish (it was killed)"
            )
            lines.append(f"last transfer from {source}: started {last.started_at}, {state}")
            todo = last.experiments_still_to_do
            if todo:
                shown = ", ".join(todo[:10]) + (", ..." if len(todo) > 10 else "")
                recorded = plural(last.units_recorded, "unit")
                lines.append(
                    f"STILL TO DO {kind('experiment').count(len(todo))} of {last.experiments_planned:,} it planned"
                    f" ({shown}) and their runs: {recorded} {'was' if last.units_recorded == 1 else 'were'}"
                    " recorded before it ended; run the same command again to resume"
                )
    return "\n".join(lines)


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _yes_no(value) -> str:
    return "?" if value is None else "yes" if value else "no"


def _selection_text(selection: dict) -> list[tuple[str, str]]:
    """What the export took: each part as the user would have typed it; empty means all."""
    experiments = selection.get("experiments") or []
    run_ids = selection.get("run_ids") or []
    return [
        ("experiments", ", ".join(map(str, experiments)) if experiments else "all"),
        ("run ids", ", ".join(map(str, run_ids)) if run_ids else "all"),
        ("include deleted", _yes_no(selection.get("include_deleted"))),
        ("filter", selection.get("filter") or "none"),
        ("models", (", ".join(map(str, selection.get("models") or [])) or "all")
         + (", without the runs behind them" if selection.get("models_only") else "")),
    ]


def _columns(rows: list[list[str]], numbers: tuple[int, ...] = ()) -> list[str]:
    """Rows of cells, each column as wide as its widest cell; the columns of numbers
    right-aligned, so that their digits line up."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.rjust(w) if i in numbers else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]


def inspect_text(info: dict) -> str:
    """What `inspect_bundle` returns, in aligned columns. Keys a bundle (or an older
    trackport) does not have are shown as '?' or left out, never a crash."""
    producer = info.get("producer") or {}
    source = info.get("source") or {}
    fields: list[tuple[str, str]] = [
        ("format", f"{info.get('format', '?')} {info.get('format_version', '?')}"),
        ("producer", f"{producer.get('name', '?')} {producer.get('version', '?')}"),
        ("source", f"{source.get('kind', '?')} {source.get('uri', '?')} (MLflow {source.get('mlflow_version') or '?'})"),
        ("created at", str(info.get("created_at") or "?")),
    ]
    selection = info.get("selection")
    if isinstance(selection, dict):
        fields += [(f"selection: {name}", value) for name, value in _selection_text(selection)]
    counts = info.get("counts")
    if isinstance(counts, dict):
        fields += [(f"counts: {_label(m)}", _number(counts[m])) for m in _measures(counts)]
    deleted = info.get("deleted")
    if isinstance(deleted, dict):
        fields += [(f"deleted: {_label(m)}", _number(n)) for m, n in deleted.items()]
    width = max(len(name) for name, _ in fields) + 2
    lines = [f"{name:<{width}}{value}" for name, value in fields]
    experiments = info.get("experiments") or []
    if experiments:
        rows = [["id", "name", "state", "runs"]]
        unreadable = []
        for experiment in experiments:
            name = experiment.get("name")
            if experiment.get("unreadable"):
                # Its reason is a sentence: said below the table, so the columns stay narrow.
                state, runs = "unreadable", "?"
                unreadable.append(f"experiment {experiment.get('experiment_id')} is unreadable: {experiment['unreadable']}")
            else:
                state, runs = str(experiment.get("lifecycle_stage") or "?"), f"{experiment.get('runs', 0):,}"
            rows.append([str(experiment.get("experiment_id")), "" if name is None else repr(name), state, runs])
        lines += ["", f"{kind('experiment').count(len(experiments))}:"] + ["  " + line for line in _columns(rows, numbers=(3,))]
        lines += unreadable
    return "\n".join(lines)


def sync_line(actions: dict[str, int]) -> str:
    """A sync's runs in one line."""
    words = {"new": "new", "updated": "updated in place", "unchanged": "unchanged", "conflicts": "in conflict",
             "gone": "gone from the source"}
    return "sync: " + ", ".join(f"{actions.get(k, 0):,} {w}" for k, w in words.items())
