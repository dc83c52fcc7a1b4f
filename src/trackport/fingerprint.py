"""A run's fingerprint: what a cheap listing says of it, hashed part by part, so that a sync
or an incremental export can tell which runs changed since the last time without reading
their histories, and say what changed.

MLflow gives no "changed since" signal (runs have no last-update time, tag edits move no
timestamp), so the fingerprint is built from the run's state itself: its info (name,
status, times, lifecycle, user), params, tags, dataset inputs, the latest point of each
metric (value, step, timestamp) and, where listed, its artifact paths and sizes. A point
logged below a metric's latest step is not seen (the latest point stays the same); a
`--full` pass reads every history. trackport's own provenance tags are left out: a source
and its copy differ in them by design.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Iterable, Mapping

from trackport.domain import ArtifactFile, MetricSummary, Run
from trackport.provenance import is_provenance_tag

PARTS = ("info", "params", "tags", "inputs", "metrics", "artifacts")

Fingerprint = dict[str, str]  # part -> hash; "artifacts" absent where they were not listed


def _hash(value: object) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _number(value: float) -> object:
    """JSON has no NaN or infinity: their names stand in."""
    return repr(value) if math.isnan(value) or math.isinf(value) else value


def fingerprint(
    run: Run,
    latest: Mapping[str, MetricSummary],
    artifacts: Iterable[ArtifactFile] | None = None,
    *,
    ignore_tags: Iterable[str] = (),
) -> Fingerprint:
    """The run's fingerprint from its listing, its latest metric points and (None: not
    listed) its artifact files. ignore_tags: tags left out besides trackport's own (the
    parent link, which names a different run in a copy)."""
    ignored = set(ignore_tags)
    found = {
        "info": _hash(
            [run.run_name, run.status, run.start_time, run.end_time, run.lifecycle_stage, run.user_id]
        ),
        "params": _hash(run.params),
        "tags": _hash({k: v for k, v in run.tags.items() if not is_provenance_tag(k) and k not in ignored}),
        "inputs": _hash(sorted(
            [d.name, d.digest, d.source_type, d.source, d.schema, d.profile, sorted(d.tags.items())] for d in run.inputs
        )),
        "metrics": _hash({k: [_number(s.latest), s.step, s.timestamp] for k, s in latest.items()}),
    }
    if artifacts is not None:
        found["artifacts"] = _hash(sorted([a.path, a.size] for a in artifacts))
    return found


def changed_parts(before: Mapping[str, str] | None, now: Mapping[str, str]) -> list[str]:
    """The parts that differ (every part when there is no earlier fingerprint); a part one
    side did not take (artifacts not listed) is not compared."""
    if not before:
        return list(PARTS)
    return [p for p in PARTS if p in before and p in now and before[p] != now[p]]
