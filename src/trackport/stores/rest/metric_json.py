"""Metric points as the JSON of log-batch requests, built column-wise by Arrow.

A dict per point encoded by json.dumps costs more client CPU than everything else an
import does; here each point's JSON text is assembled by Arrow's string kernels, and
Python only joins the texts of one request. Arrow formats a double as its shortest
round-trip decimal, so every value arrives bit for bit; NaN and ±inf go as the strings
MLflow's server reads as such ("NaN", "Infinity", "-Infinity"), never as bare tokens.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc


def point_texts(batch: pa.RecordBatch) -> tuple[pa.Array, int]:
    """The JSON text of each point of a (key, step, timestamp, value) batch, and how
    many of its values are ±inf."""
    keys = batch.column("key")
    if not isinstance(keys, pa.DictionaryArray):
        keys = pc.dictionary_encode(keys)
    quoted_keys = pa.array([json.dumps(k) for k in keys.dictionary.to_pylist()], pa.string())
    key_texts = pc.take(quoted_keys, keys.indices)
    values = batch.column("value").cast(pa.float64())
    is_inf = pc.is_inf(values)
    value_texts = pc.cast(values, pa.string())
    value_texts = pc.if_else(pc.equal(value_texts, "-0"), "-0.0", value_texts)
    value_texts = pc.if_else(is_inf, pc.if_else(pc.greater(values, 0), '"Infinity"', '"-Infinity"'), value_texts)
    value_texts = pc.if_else(pc.is_nan(values), '"NaN"', value_texts)
    texts = pc.binary_join_element_wise(
        '{"key":', key_texts,
        ',"value":', value_texts,
        ',"timestamp":', pc.cast(batch.column("timestamp"), pa.string()),
        ',"step":', pc.cast(batch.column("step"), pa.string()),
        "}", "",
    )
    return texts, pc.sum(is_inf).as_py() or 0


class MetricTexts:
    """The points of a run's metric batches, handed out `take(n)` at a time as the inner
    text of a JSON list."""

    def __init__(self, batches: Iterable[pa.RecordBatch]) -> None:
        self._batches: Iterator[pa.RecordBatch] = iter(batches)
        self._texts: list[str] = []
        self._at = 0
        self.infinities = 0

    def take(self, n: int) -> tuple[str, int]:
        """Up to n points: their texts joined by commas, and how many there are."""
        taken: list[str] = []
        while len(taken) < n:
            if self._at == len(self._texts) and not self._next_batch():
                break
            more = self._texts[self._at : self._at + n - len(taken)]
            taken += more
            self._at += len(more)
        return ",".join(taken), len(taken)

    def _next_batch(self) -> bool:
        for batch in self._batches:
            if not isinstance(batch, pa.RecordBatch):
                batch = pa.record_batch(batch)
            if batch.num_rows:
                texts, infinities = point_texts(batch)
                self.infinities += infinities
                self._texts, self._at = texts.to_pylist(), 0
                return True
        return False
