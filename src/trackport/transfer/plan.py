"""What a sink cannot hold, said before anything is written."""
from __future__ import annotations

from trackport.domain import Capabilities


def planned_losses(capabilities: Capabilities, on_long_value: str = "error") -> list[str]:
    """One line per kind of data the sink will not hold exactly, from its capabilities."""
    losses = []
    if not capabilities.keeps_run_ids:
        losses.append(
            "run ids: the target assigns new ones; idmap.jsonl maps them and each run keeps its"
            " source id in the tag trackport.source.run_id"
        )
    if not capabilities.keeps_experiment_ids:
        losses.append("experiment ids: the target assigns new ones (mapped in idmap.jsonl)")
    if not capabilities.keeps_experiment_times:
        losses.append("experiment creation and last-update times: the target sets them to the time of writing")
    if not capabilities.keeps_times:
        losses.append("run start and end times: the target sets them to the time of writing")
    if not capabilities.keeps_users:
        losses.append("run users: runs belong to the user whose credentials write them")
    if not capabilities.keeps_deleted_time:
        losses.append("deleted runs: their deleted_time becomes the time of writing")
    if not capabilities.keeps_infinity:
        losses.append("metric values ±inf: stored as ±1.7976931348623157e308 by the target")
    action = "the run fails (--on-long-value truncate cuts them instead)" if on_long_value == "error" else "cut to the limit"
    if capabilities.max_param_value_length:
        losses.append(f"param values over {capabilities.max_param_value_length} characters: {action}")
    if capabilities.max_tag_value_length:
        losses.append(f"tag values over {capabilities.max_tag_value_length} characters: {action}")
    return losses
