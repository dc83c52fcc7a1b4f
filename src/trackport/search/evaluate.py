"""One evaluator of parsed filters, for every store kind, with MLflow's semantics.

A clause on a value the run does not have (a param, tag or metric it never logged, an
attribute without a value) matches nothing but IS NULL. Strings compare exactly and case
sensitively; LIKE and ILIKE take `%` and `_` as MLflow does. A metric compares its latest value
(MLflow's rule), MIN() and MAX() the least and greatest value of its whole history with NaN
points ignored (as SQL's MIN and MAX ignore NULL: a history of NaN only has neither), LATEST()
the latest value. A NaN value is neither equal to, less nor greater than any number (so only
`!=` matches it), as in Python and in MLflow's own file-store search.
"""
from __future__ import annotations

import operator
import re
from functools import lru_cache
from typing import Callable, Mapping

from trackport.domain import MetricSummary, Run
from trackport.search.parser import ATTRIBUTE, DATASET, METRIC, PARAM, TAG, Clause, Filter

DATASET_CONTEXT_TAG = "mlflow.data.context"


@lru_cache(maxsize=256)
def _like_regex(pattern: str, flags: int) -> re.Pattern:
    """MLflow's reading of a LIKE pattern (mlflow.utils.search_utils), to match what its
    searches match."""
    regex = re.escape(pattern).replace("%", ".*").replace("_", ".")
    if not pattern.startswith("%"):
        regex = "^" + regex
    if not pattern.endswith("%"):
        regex += "$"
    return re.compile(regex, flags)


COMPARE: dict[str, Callable[[object, object], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "LIKE": lambda text, pattern: _like_regex(pattern, 0).match(text) is not None,
    "ILIKE": lambda text, pattern: _like_regex(pattern, re.IGNORECASE).match(text) is not None,
    "IN": lambda value, values: value in values,
    "NOT IN": lambda value, values: value not in values,
}


def matches(flt: Filter, run: Run, metrics: Mapping[str, MetricSummary]) -> bool:
    """Whether the run, with the summaries of the metrics the filter names, matches every clause."""
    return all(clause_matches(clause, run, metrics) for clause in flt.clauses)


def clause_matches(clause: Clause, run: Run, metrics: Mapping[str, MetricSummary]) -> bool:
    if clause.kind == DATASET:
        return any(_compare(clause, value) for value in _dataset_values(run, clause.key))
    return _compare(clause, _value(clause, run, metrics))


def _compare(clause: Clause, lhs: object) -> bool:
    if clause.comparator == "IS NULL":
        return lhs is None
    if clause.comparator == "IS NOT NULL":
        return lhs is not None
    return lhs is not None and COMPARE[clause.comparator](lhs, clause.value)


def _value(clause: Clause, run: Run, metrics: Mapping[str, MetricSummary]) -> object:
    if clause.kind == METRIC:
        summary = metrics.get(clause.key)
        if summary is None:
            return None
        return summary.min if clause.aggregate == "MIN" else summary.max if clause.aggregate == "MAX" else summary.latest
    if clause.kind == PARAM:
        return run.params.get(clause.key)
    if clause.kind == TAG:
        return run.tags.get(clause.key)
    assert clause.kind == ATTRIBUTE, clause
    return getattr(run, clause.key)


def _dataset_values(run: Run, field: str) -> list[str | None]:
    if field == "context":
        return [i.tags.get(DATASET_CONTEXT_TAG) for i in run.inputs if DATASET_CONTEXT_TAG in i.tags]
    return [getattr(i, field) for i in run.inputs]
