"""The state files a transfer appends to (ledger, id map): a line torn by a crash is cut
when the file is opened again, and the id map, kept in a scratch sqlite file while it runs,
reads back and compacts to the same sorted file whatever order units finished in."""
from __future__ import annotations

import json
import random

import pytest

from trackport.transfer.idmap import IdMap
from trackport.transfer.jsonl import JsonlAppender, read_jsonl

WHOLE = b'{"a": 1}\n{"b": 2}\n'


@pytest.mark.parametrize("content, kept", [
    (b"", b""),
    (WHOLE, WHOLE),
    (WHOLE + b'{"c": 3', WHOLE),  # torn while appending
    (b'{"c": 3', b""),  # the only line torn
    (WHOLE + b'{"long": "' + b"x" * 200_000, WHOLE),  # a torn line longer than the block read from the end
])
def test_a_torn_last_line_is_cut_when_the_file_is_opened_again(tmp_path, content, kept):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(content)
    appender = JsonlAppender(path)
    appender.append({"d": 4})
    appender.close()
    assert path.read_bytes() == kept + b'{"d": 4}\n'
    assert list(read_jsonl(path))[-1] == {"d": 4}


def test_the_id_map_reads_back_and_compacts_sorted_whatever_the_order(tmp_path):
    ids = {f"tr-{i:04x}é": f"new-{i}" for i in range(300)}
    order = list(ids)
    random.Random(3).shuffle(order)
    first = IdMap(tmp_path)
    for source in order[:200]:
        first.add("trace", source, ids[source])
    first.add("run", "r1", "t1")
    first.close()  # stopped part-way: the file holds what was added, in finishing order
    again = IdMap(tmp_path)
    assert again.get("trace", order[0]) == ids[order[0]] and again.get("trace", order[250]) is None
    for source in order:
        again.add("trace", source, ids[source])  # the first 200 again: no line added twice
    again.compact()
    again.close()
    lines = [json.loads(line) for line in (tmp_path / "idmap.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines == [{"kind": "run", "source_id": "r1", "target_id": "t1"}] + [
        {"kind": "trace", "source_id": s, "target_id": ids[s]} for s in sorted(ids)]


def test_opening_a_long_file_reads_its_end_only(tmp_path):
    """A resumed transfer of a million traces opens an id map of ~150 MB: what opening it
    for appending reads is a block from its end, not the file."""
    import tracemalloc

    path = tmp_path / "idmap.jsonl"
    path.write_bytes(b'{"kind": "trace", "source_id": "tr-0", "target_id": "tr-1"}\n' * 100_000 + b'{"kind": "tr')
    tracemalloc.start()
    try:
        JsonlAppender(path).close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert path.read_bytes().endswith(b'"tr-1"}\n')
    assert peak < 1 << 20, f"{peak:,} bytes to open a {path.stat().st_size:,}-byte file"
