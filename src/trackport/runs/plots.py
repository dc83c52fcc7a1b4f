"""What the comparison plots show and the plotly figures that show it (trackport.runs.report
puts them into one page). Which params and metrics are plotted is chosen here; the drawing
is plotly's. plotly is imported only when a figure is made: `pip install 'trackport[report]'`.

Each plot holds the runs that have a plottable value for every key it plots (a param, or a
finite metric value), as MLflow's compare page does; the page names the runs left out."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trackport.errors import BadInputError
from trackport.runs.compare import METRIC, PARAM, Comparison, History, Row

DEFAULT_PLOTTED = 5  # params and as many metrics, when they are not named
MARKED_POINTS = 200  # a history this short is drawn with a marker at each point (one point shows)
LARGEST_PLOTTED = 1e300  # beyond it plotly's axis arithmetic overflows (NaN paths, console errors)
CATEGORY_CHARACTERS = 20  # of a text value on an axis
MARGIN = {"t": 40}  # the page titles each figure
MISSING_PLOTLY = "--html needs plotly: pip install 'trackport[report]'"
PlotValue = float | str


@dataclass(frozen=True)
class Dimension:
    """One plotted param or metric: its plottable value in each compared run (None: none)."""

    section: str
    key: str
    values: tuple[PlotValue | None, ...]
    numeric: bool  # every value a number: drawn on a numeric axis; otherwise as categories
    differs: bool  # the comparison's row differs

    @property
    def label(self) -> str:
        return f"{self.section}s.{self.key}"

    @property
    def holders(self) -> frozenset[int]:
        """The indexes of the runs that have a value."""
        return frozenset(i for i, value in enumerate(self.values) if value is not None)


@dataclass(frozen=True)
class PlotChoice:
    params: tuple[Dimension, ...]
    metrics: tuple[Dimension, ...]
    chosen_by_default: bool  # trackport chose some of them (--params or --metrics not given)

    @property
    def dimensions(self) -> tuple[Dimension, ...]:
        return self.params + self.metrics

    @property
    def y(self) -> Dimension | None:
        """The scatter and box plots' vertical axis: the first metric, else the first param."""
        return (self.metrics or self.params or (None,))[0]

    @property
    def x(self) -> Dimension | None:
        """Their horizontal axis: the first param, else the second metric; None: the run names."""
        others = [d for d in (self.params[:1] + self.metrics[1:2]) if d is not self.y]
        return others[0] if others else None


def choose(comparison: Comparison, params: tuple[str, ...] = (), metrics: tuple[str, ...] = ()) -> PlotChoice:
    """The params and metrics named, or by default: the metric the most runs have (ties: one
    whose values differ, then by key) and up to DEFAULT_PLOTTED - 1 more that every run
    having it has; then up to DEFAULT_PLOTTED params every run having the plotted metrics
    has (differing ones first, then numeric ones, then by key). So the plots show those runs
    whole."""
    param_dims = {row.key: _dimension(row) for row in comparison.section(PARAM)}
    metric_dims = {row.key: _dimension(row) for row in comparison.section(METRIC)}
    by_default = not (params and metrics)
    if not metrics:
        ranked = sorted(metric_dims.values(), key=lambda d: (-len(d.holders), not d.differs, d.key))
        metrics = tuple(d.key for d in ranked if ranked[0].holders <= d.holders)[:DEFAULT_PLOTTED]
    chosen_metrics = tuple(metric_dims[key] for key in metrics)
    holders = frozenset(range(len(comparison.runs))).intersection(*(d.holders for d in chosen_metrics))
    if not params:
        ranked = sorted(param_dims.values(), key=lambda d: (not d.differs, not d.numeric, d.key))
        params = tuple(d.key for d in ranked if holders <= d.holders)[:DEFAULT_PLOTTED]
    return PlotChoice(tuple(param_dims[key] for key in params), chosen_metrics, chosen_by_default=by_default)


def plotted_runs(dimensions: tuple[Dimension, ...], runs: int) -> list[int]:
    """The indexes of the runs that have a value for every dimension."""
    return [i for i in range(runs) if all(d.values[i] is not None for d in dimensions)]


def figures(comparison: Comparison, histories: dict[str, dict[str, History]], choice: PlotChoice) -> list[tuple[str, Any, list[str]]]:
    """(title, plotly figure, names of the runs it leaves out) of every plot, in page order:
    parallel coordinates, scatter, box (when anything is plotted), then each metric's history."""
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise BadInputError(MISSING_PLOTLY) from exc
    names = run_labels(comparison)
    found = []
    if choice.dimensions:
        for title, dims, draw in (
            ("Parallel coordinates", choice.dimensions, _parallel_coordinates),
            ("Scatter", scatter_axes(choice), _scatter),
            ("Box", _box_axes(choice), _box),
        ):
            shown = plotted_runs(dims, len(names))
            trace, layout = draw(go, choice, shown, names)
            figure = go.Figure(trace)
            figure.update_layout({"margin": MARGIN, **layout})
            found.append((title, figure, [names[i] for i in range(len(names)) if i not in shown]))
    for row in comparison.section(METRIC):
        figure = go.Figure()
        for run, name in zip(comparison.runs, names):
            history = histories.get(run.run_id, {}).get(row.key)
            if history is not None:
                mode = "lines+markers" if len(history.steps) <= MARKED_POINTS else "lines"
                figure.add_trace(go.Scatter(x=history.steps, y=plottable_values(history.values), name=name, mode=mode))
        figure.update_layout(margin=MARGIN, xaxis_title="step", yaxis_title=f"metrics.{row.key}", showlegend=True)
        found.append((f"History of {row.key}", figure, []))
    return found


def run_labels(comparison: Comparison) -> list[str]:
    """One label per run: its name, with the start of its id where names repeat or are empty."""
    names = [run.run_name for run in comparison.runs]
    return [
        name if name and names.count(name) == 1 else f"{name or 'run'} ({run.run_id[:8]})"
        for name, run in zip(names, comparison.runs)
    ]


def _parallel_coordinates(go, choice: PlotChoice, shown: list[int], names: list[str]):
    """A first axis names the runs (the lines have no hover labels), then one per dimension."""
    runs = [names[i] for i in shown]
    dimensions = [_categories("run", runs, runs)]
    for dim in choice.dimensions:
        values = [dim.values[i] for i in shown]
        dimensions.append({"label": dim.label, "values": values} if dim.numeric else _categories(dim.label, values, sorted(set(values))))
    # Coloured by the last axis (a metric when any is plotted), as MLflow's compare page does.
    line = {"color": dimensions[-1]["values"], "colorscale": "Viridis", "showscale": True}
    return go.Parcoords(dimensions=dimensions, line=line), {"margin": {"t": 80}}  # room for the axis labels


def _categories(label: str, values: list, categories: list) -> dict:
    """A parallel-coordinates axis of text values: one tick per category."""
    return {
        "label": label, "values": [categories.index(v) for v in values],
        "tickvals": list(range(len(categories))), "ticktext": [str(c)[:CATEGORY_CHARACTERS] for c in categories],
    }


def _scatter(go, choice: PlotChoice, shown: list[int], names: list[str]):
    x = [choice.x.values[i] for i in shown] if choice.x else [names[i] for i in shown]
    return go.Scatter(
        x=x, y=[choice.y.values[i] for i in shown], text=[names[i] for i in shown], mode="markers+text",
        textposition="top center", marker={"size": 12},
    ), {"xaxis_title": choice.x.label if choice.x else "run", "yaxis_title": choice.y.label}


def _box(go, choice: PlotChoice, shown: list[int], names: list[str]):
    """The y values grouped by the x param's values, as MLflow's box plot; one box without one."""
    by = _box_axes(choice)[1:]
    x = [str(by[0].values[i]) for i in shown] if by else None
    return go.Box(
        x=x, y=[choice.y.values[i] for i in shown], text=[names[i] for i in shown], boxpoints="all", name=choice.y.label,
    ), {"xaxis_title": by[0].label if by else "", "yaxis_title": choice.y.label}


def scatter_axes(choice: PlotChoice) -> tuple[Dimension, ...]:
    """The scatter plot's y and x (when it is not the run names)."""
    return tuple(d for d in (choice.y, choice.x) if d is not None)


def _box_axes(choice: PlotChoice) -> tuple[Dimension, ...]:
    return tuple(d for d in scatter_axes(choice) if d is choice.y or d.section == PARAM)


def _dimension(row: Row) -> Dimension:
    if row.section == METRIC:
        values = tuple(v if plottable(v) else None for v in row.values)
        return Dimension(row.section, row.key, values, True, row.differs)
    numbers = tuple(_number(v) for v in row.values)
    numeric = all(n is not None for n, v in zip(numbers, row.values) if v is not None)
    return Dimension(row.section, row.key, numbers if numeric else row.values, numeric, row.differs)


def _number(text: str | None) -> float | None:
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return number if plottable(number) else None


def plottable(value: float | None) -> bool:
    """A number a plot can place: not NaN, not infinite, and not so large that the axis
    arithmetic overflows (SQL stores keep +-inf as +-1.7976931348623157e308)."""
    return value is not None and math.isfinite(value) and abs(value) <= LARGEST_PLOTTED


def plottable_values(values: tuple[float, ...]) -> list[float | None]:
    """The values, those no plot can place as None: a gap in a line (plotly and matplotlib
    draw no point for None and NaN)."""
    return [v if plottable(v) else None for v in values]
