"""Runs moved into a bundle with their fingerprints, and into an increment (export
--since-bundle) as references to what the previous link holds already.

`IncrementalRunUnits` is the run unit type of every export: for each run it builds the
run's fingerprint (trackport.fingerprint) from what the source gives cheaply (the run's
listing, its latest metric points, its artifact paths and sizes), compares it with the one
the previous link recorded (none for a full export: every part counts as changed) and hands
the run, its fingerprint and the parts that changed to the sink's `put_run_since`. The bundle
sink records the fingerprint; an increment's sink writes an unchanged run as references
only and a changed one with references for what it holds already (bundle/increment.py).
A sink without `put_run_since` gets the run as RunUnits moves it.
"""
from __future__ import annotations

from trackport.domain import Run
from trackport.fingerprint import PARTS, changed_parts
from trackport.stores.base import SinkStore, SourceStore
from trackport.transfer.units import Moved, RunUnits, SourceRunContent, remap_parent, source_fingerprint


class IncrementalRunUnits(RunUnits):
    def move(self, source: SourceStore, sink: SinkStore, run: Run, target_experiment_id: str, targets: dict) -> Moved:
        put = getattr(sink, "put_run_since", None)
        if put is None:
            return super().move(source, sink, run, target_experiment_id, targets)
        remapped, losses = remap_parent(run, targets)
        existing = sink.find_run(remapped, target_experiment_id)
        if existing is not None:
            return Moved(existing, "skipped", "already complete in the target")
        found, artifacts = source_fingerprint(source, run)
        before = sink.previous_fingerprint(run)
        changed = changed_parts(before, found) if before else list(PARTS)
        if before and "artifacts" not in before:
            changed.append("artifacts")  # not compared: each file is still matched by path and size
        content = SourceRunContent(source, run, artifacts)
        moved = self.write(
            source, run, losses, lambda: put(remapped, target_experiment_id, content, fingerprint=found, changed=changed), sink,
        )
        if before and not changed:
            moved.notes.append("unchanged since the previous bundle: written as a reference to it")
        return moved
