"""trackport runs: see the group's modules."""
from __future__ import annotations

import json
from pathlib import Path

import click

from trackport.cli import render
from trackport.cli.running import fail_cleanly
from trackport.cli.runs.group import runs_group
from trackport.opening import open_source
from trackport.runs.compare import ATTRIBUTE, METRIC, PARAM, Comparison, compare_runs, display, load_runs, metric_histories
from trackport.runs.plots import choose
from trackport.runs.report import write_html, write_png

CELL_WIDTH = 40  # characters of a value the table shows; --json and --html show it whole
TITLES = {ATTRIBUTE: "ATTRIBUTES", PARAM: "PARAMS", METRIC: "METRICS (latest values)"}
DIFFERS = "*"


def _keys(ctx, param, value: str | None) -> tuple[str, ...]:
    """A,B as ("A", "B"): MLflow keys hold no commas."""
    return tuple(dict.fromkeys(key.strip() for key in (value or "").split(",") if key.strip()))


def _new_file(ctx, param, value: Path | None) -> Path | None:
    """A file to write, refused before anything is read when its folder is not there."""
    if value is not None and not value.parent.is_dir():
        raise click.BadParameter(f"{value.parent} is not a folder", ctx, param)
    return value


@runs_group.command("compare")
@click.argument("source")
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_ID...")
@click.option("--only-diff", is_flag=True, help="Hide the rows whose values are the same in every run.")
@click.option("--params", callback=_keys, metavar="A,B", help="Only these params (default: all), in this order.")
@click.option("--metrics", callback=_keys, metavar="X,Y", help="Only these metrics (default: all), in this order.")
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), callback=_new_file, metavar="FILE",
    help="Write one page that opens with no network: the tables, parallel coordinates, scatter and box plots"
    " of the params and metrics named (or chosen), and each metric's history.",
)
@click.option(
    "--png", "png_path", type=click.Path(dir_okay=False, path_type=Path), callback=_new_file, metavar="FILE",
    help="Write one picture: the scatter plot and the history of each plotted metric.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@fail_cleanly
def compare_command(source, run_ids, only_diff, params, metrics, html_path, png_path, as_json):
    """Params, latest metric values and attributes of runs side by side (of one experiment or several).

    A value a run does not have shows as "-" (null in JSON) and makes its row differ; rows
    that differ are marked with *. --html and --png need 'trackport[report]'."""
    with open_source(source) as store:
        loaded = load_runs(store, run_ids)
        comparison = compare_runs(store, loaded, params, metrics)
        if html_path or png_path:
            choice = choose(comparison, params, metrics)
            metric_keys = [row.key for row in comparison.section(METRIC)]
            histories = metric_histories(store, [run for _, run in loaded], metric_keys)
            if html_path:
                count = write_html(html_path, comparison, histories, choice, only_diff=only_diff, source=store.describe().uri)
                render.notice(f"wrote {html_path} ({count} figures)")
            if png_path:
                width, height = write_png(png_path, comparison, histories, choice)
                render.notice(f"wrote {png_path} ({width}x{height} pixels)")
    shown = comparison.only_differing() if only_diff else comparison
    click.echo(json.dumps(shown.to_json(), indent=2, ensure_ascii=False) if as_json else table(shown))


def table(comparison: Comparison) -> str:
    """The comparison as text: one column per run headed by its name and id, one line per
    row under its section's title, rows that differ marked."""
    lines: list[str | tuple[str, str, list[str]]] = [
        (" ", "run", [run.run_name for run in comparison.runs]),
        (" ", "run id", [run.run_id for run in comparison.runs]),
    ]
    for section, title in TITLES.items():
        rows = comparison.section(section)
        lines += [title] if rows else []
        lines += [(DIFFERS if row.differs else " ", row.key, [display(row, v) for v in row.values]) for row in rows]
    rows = [(line[0], _cut(line[1]), [_cut(cell) for cell in line[2]]) for line in lines if not isinstance(line, str)]
    key_width = max(len(key) for _, key, _ in rows)
    widths = [max(len(cells[i]) for _, _, cells in rows) for i in range(len(comparison.runs))]
    aligned = iter(f"{marker} {key:<{key_width}}  " + "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)) for marker, key, cells in rows)
    text = [line if isinstance(line, str) else next(aligned).rstrip() for line in lines]
    if not comparison.rows:
        text.append("(no row differs: every value is the same in every run)")
    elif any(row.differs for row in comparison.rows):
        text.append(f"{DIFFERS} differs between the runs")
    return "\n".join(text)


def _cut(text: str) -> str:
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"
