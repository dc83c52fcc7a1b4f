"""A comparison as one self-contained HTML page (the tables and plotly's figures, plotly.js
inlined: it opens with no network) or as one PNG picture (matplotlib), each written whole or
not at all. What is plotted is trackport.runs.plots' choice."""
from __future__ import annotations

import html
import math
from pathlib import Path

from trackport._files import atomic_open
from trackport.errors import BadInputError
from trackport.runs.compare import ATTRIBUTE, METRIC, PARAM, Comparison, History, display
from trackport.runs.plots import (
    DEFAULT_PLOTTED, PlotChoice, figures, plottable_values, plotted_runs, run_labels, scatter_axes,
)

# No logo linking to plotly's site: the page makes no request and links nowhere.
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
SECTION_TITLES = {ATTRIBUTE: "Attributes", PARAM: "Params", METRIC: "Metrics (latest values)"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top;
         max-width: 28em; overflow-wrap: anywhere; }
th.section { background: #eee; }
tr.differs td { background: #fff6d5; }
td.missing { color: #999; }
.note { color: #555; }
.figure { margin-bottom: 2em; }
"""
PNG_COLUMNS, PNG_PANEL_INCHES, PNG_DPI = 2, (6.0, 4.0), 100
MISSING_CELL = ' class="missing"'
MISSING_MATPLOTLIB = "--png needs matplotlib: pip install 'trackport[report]'"


def write_html(
    path: Path, comparison: Comparison, histories: dict[str, dict[str, History]], choice: PlotChoice,
    *, only_diff: bool, source: str,
) -> int:
    """Write the page at path (replacing it whole); the number of figures it holds."""
    plots = figures(comparison, histories, choice)  # says so when plotly is missing
    from plotly.offline import get_plotlyjs

    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>trackport: comparing {len(comparison.runs)} runs</title>",
        f"<style>{STYLE}</style>", f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body>",
        f"<h1>Comparing {len(comparison.runs)} runs</h1>", f'<p class="note">from {html.escape(source)}</p>',
        _table(comparison.only_differing() if only_diff else comparison),
    ]
    if only_diff:
        hidden = len(comparison.rows) - len(comparison.only_differing().rows)
        parts.append(f'<p class="note">Hidden (--only-diff): {hidden} row(s) whose values are the same in every run.</p>')
    parts += ["<h2>Plots</h2>", f'<p class="note">{html.escape(_choice_note(choice))}</p>']
    for n, (title, figure, left_out) in enumerate(plots):
        parts.append(f'<div class="figure"><h3>{html.escape(title)}</h3>')
        parts.append(figure.to_html(full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG, div_id=f"figure-{n}"))
        if left_out:
            names = ", ".join(left_out)
            parts.append(f'<p class="note">Left out (no value for a plotted key): {html.escape(names)}</p>')
        parts.append("</div>")
    parts.append("</body></html>\n")
    with atomic_open(Path(path), "w", encoding="utf-8") as out:
        out.write("\n".join(parts))
    return len(plots)


def write_png(path: Path, comparison: Comparison, histories: dict[str, dict[str, History]], choice: PlotChoice) -> tuple[int, int]:
    """Write one picture at path (replacing it whole): the scatter plot of the HTML page and
    the history of each plotted metric, two panels a row. Its (width, height) in pixels."""
    try:
        from matplotlib.figure import Figure  # a Figure of its own: no pyplot, no global backend
    except ImportError as exc:
        raise BadInputError(MISSING_MATPLOTLIB) from exc
    names = run_labels(comparison)
    panels = 1 + len(choice.metrics)
    rows = math.ceil(panels / PNG_COLUMNS)
    columns = min(panels, PNG_COLUMNS)
    width, height = PNG_PANEL_INCHES
    figure = Figure(figsize=(width * columns, height * rows), dpi=PNG_DPI, layout="constrained")
    axes = iter(figure.subplots(rows, columns, squeeze=False).flat)
    if choice.dimensions:
        _png_scatter(next(axes), choice, names)
    else:
        next(axes).text(0.5, 0.5, "the runs have no params or metrics to plot", ha="center")
    for dim in choice.metrics:
        ax = next(axes)
        for run, name in zip(comparison.runs, names):
            history = histories.get(run.run_id, {}).get(dim.key)
            if history is not None:
                values = [math.nan if v is None else v for v in plottable_values(history.values)]
                ax.plot(history.steps, values, label=name, marker="o" if len(history.steps) == 1 else None)
        ax.set(title=dim.label, xlabel="step")
        ax.legend(fontsize="small")
    for ax in axes:  # the empty cell of an odd number of panels
        ax.set_visible(False)
    with atomic_open(Path(path), "wb") as out:
        figure.savefig(out, format="png", dpi=PNG_DPI)
    return round(width * columns * PNG_DPI), round(height * rows * PNG_DPI)


def _png_scatter(ax, choice: PlotChoice, names: list[str]) -> None:
    shown = plotted_runs(scatter_axes(choice), len(names))
    xs = [choice.x.values[i] for i in shown] if choice.x else [names[i] for i in shown]
    if not (choice.x and choice.x.numeric):  # text: matplotlib's categorical axis
        xs = [str(x) for x in xs]
    ys = [choice.y.values[i] if choice.y.numeric else str(choice.y.values[i]) for i in shown]
    ax.scatter(xs, ys)
    for x, y, i in zip(xs, ys, shown):
        ax.annotate(names[i], (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize="small")
    ax.set(title=f"{choice.y.label} by {choice.x.label if choice.x else 'run'}", xlabel=choice.x.label if choice.x else "run",
           ylabel=choice.y.label)


def _table(comparison: Comparison) -> str:
    heads = "".join(f"<th>{html.escape(run.run_name)}</th>" for run in comparison.runs)
    ids = "".join(f"<th><code>{html.escape(run.run_id)}</code></th>" for run in comparison.runs)
    lines = ["<table>", f"<tr><th>run</th>{heads}</tr>", f"<tr><th>run id</th>{ids}</tr>"]
    for section, title in SECTION_TITLES.items():
        rows = comparison.section(section)
        if not rows:
            continue
        lines.append(f'<tr><th class="section" colspan="{len(comparison.runs) + 1}">{title}</th></tr>')
        for row in rows:
            cells = "".join(f"<td{MISSING_CELL if v is None else ''}>{html.escape(display(row, v))}</td>" for v in row.values)
            marker = ' class="differs"' if row.differs else ""
            lines.append(f"<tr{marker}><th>{html.escape(row.key)}</th>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _choice_note(choice: PlotChoice) -> str:
    params = ", ".join(d.key for d in choice.params) or "none"
    metrics = ", ".join(d.key for d in choice.metrics) or "none"
    note = f"Plotted params: {params}; metrics: {metrics}."
    if choice.chosen_by_default:
        note += (
            f" Chosen by trackport where not named: the metric the most runs have, and up to {DEFAULT_PLOTTED} params and metrics"
            " every one of those runs has (differing ones first); name others with --params and --metrics."
        )
    if not choice.dimensions:
        note += " Nothing to plot: the runs have no params or metrics."
    return note
