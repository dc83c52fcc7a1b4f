"""The contract of MLflow 3's model objects every sink kind passes (a local sqlite store, a
bundle, a tracking server), and every source kind that reads them back: a transfer of the
same in-memory workspace (tests/model_memory.py: logged models with files, metrics from
two runs and links; a registered model with a deleted version between two others, aliases
and a stage; a prompt) arrives field by field (verify finds no difference, in both
directions), version numbers and gaps kept; the same transfer again writes nothing; and
what each sink declares it cannot hold is all that differs.
"""
from __future__ import annotations

import uuid


from conftest import open_target

from model_memory import model_source
from trackport.opening import open_source
from trackport.stores.base import Selection
from trackport.transfer import transfer
from trackport.transfer.compare import compare_stores

EVERYTHING = Selection(include_deleted=True)  # no other test writes a registry into the shared server


def test_models_arrive_whole_in_every_sink_and_a_second_transfer_writes_nothing(sink_uri):
    target = sink_uri
    source = model_source()
    source.experiments[0] = type(source.experiments[0])(**{**vars(source.experiments[0]), "name": f"models-{uuid.uuid4().hex[:6]}"})
    with open_target(target) as sink:
        first = transfer(source, sink, EVERYTHING)
        declared = list(first.planned_losses)
    assert first.failed == 0, first.failures
    assert first.counts["logged_models"]["done"] == 2
    assert first.counts["registered_models"]["done"] == 3
    assert first.counts["model_versions"]["done"] == 6
    with open_target(target) as sink:
        second = transfer(source, sink, EVERYTHING)
    assert second.failed == 0, second.failures
    for kind in ("logged_models", "registered_models", "model_versions"):
        assert second.counts[kind] == {"done": 0, "skipped": first.counts[kind]["done"], "failed": 0, "not_selected": 0}
    with open_source(target) as copy:
        differences = [str(d) for d in compare_stores(source, copy, EVERYTHING)]
        backwards = [str(d) for d in compare_stores(copy, source, Selection(include_deleted=True))]
        versions = sorted(u.body["version"] for u in copy.iter_model_versions(EVERYTHING) if u.refs["registered_model"] == "churn") \
            if hasattr(copy, "iter_model_versions") else sorted(
                u.body["version"] for u in copy.iter_units(_kind("model_version"), None) if u.refs["registered_model"] == "churn")
    assert differences == []
    assert versions == [1, 3, 4]  # the gap left by the deleted version 2 kept
    if target.startswith("http"):
        assert any("logged model ids" in line for line in declared)
        assert any("times of logged models" in line for line in declared)
    else:
        assert not any("model" in line for line in declared)
    if not target.startswith("http"):  # ids kept: the copy read back is the workspace again
        assert [d for d in backwards if "logged_model" in d or "model_version" in d or "registered_model" in d] == []


def _kind(name: str):
    from trackport import kinds

    return kinds.kind(name)
