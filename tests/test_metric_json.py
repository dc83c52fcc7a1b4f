"""Metric points as log-batch JSON text (stores/rest/metric_json.py)."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pyarrow as pa

from trackport.domain import METRIC_SCHEMA
from trackport.stores.rest.metric_json import MetricTexts


def _batch(keys, steps, stamps, values) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(keys), pa.array(steps, pa.int64()), pa.array(stamps, pa.int64()), pa.array(values, pa.float64())],
        schema=METRIC_SCHEMA,
    )


def _bits(value) -> bytes:
    return struct.pack("<d", value)


def test_every_value_arrives_bit_for_bit():
    rng = np.random.default_rng(7)
    values = rng.normal(size=5000) * 10.0 ** rng.integers(-300, 300, 5000)
    specials = [0.0, -0.0, 5e-324, -1.7976931348623157e308, 0.1, 1e21, 1e-7, 100.0, math.nan, math.inf, -math.inf]
    values = np.concatenate([values, specials])
    keys = ['plain', 'with "quotes" and \\ backslash', "ключ ✓", "tab\there\nnewline"]
    batch = _batch([keys[i % 4] for i in range(len(values))], list(range(len(values))),
                   [1_700_000_000_000 + i for i in range(len(values))], values)
    texts = MetricTexts([batch])
    text, count = texts.take(10**6)
    assert count == len(values) and texts.infinities == 2
    points = json.loads(f"[{text}]")
    for i, (point, value) in enumerate(zip(points, values)):
        assert point["key"] == keys[i % 4] and point["step"] == i and point["timestamp"] == 1_700_000_000_000 + i
        if math.isnan(value):
            assert point["value"] == "NaN"
        elif math.isinf(value):
            assert point["value"] == ("Infinity" if value > 0 else "-Infinity")
        else:
            assert isinstance(point["value"], (int, float))
            assert _bits(float(point["value"])) == _bits(value), (point["value"], value)


def test_take_crosses_batch_boundaries_and_skips_empty_batches():
    batches = [
        _batch(["a"] * 3, [0, 1, 2], [10, 11, 12], [1.0, 2.0, 3.0]),
        _batch([], [], [], []),
        _batch(["b"] * 4, [0, 1, 2, 3], [20, 21, 22, 23], [4.0, 5.0, 6.0, 7.0]),
    ]
    texts = MetricTexts(batches)
    taken = []
    while True:
        text, count = texts.take(2)
        if not count:
            break
        assert count == len(json.loads(f"[{text}]")) <= 2
        taken += json.loads(f"[{text}]")
    assert [(p["key"], p["step"], p["value"]) for p in taken] == [
        ("a", 0, 1), ("a", 1, 2), ("a", 2, 3), ("b", 0, 4), ("b", 1, 5), ("b", 2, 6), ("b", 3, 7)]
    assert texts.take(5) == ("", 0)
