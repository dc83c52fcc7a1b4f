"""What `--experiment REF` names, the same way in every source.

`id:2` is the experiment with id 2, `name:2` the one named "2", and a bare `2` is
whichever of the two exists; when both exist and are different experiments, the bare
form is refused as ambiguous instead of silently preferring one.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from trackport.errors import BadInputError

T = TypeVar("T")  # anything with .experiment_id and .name (an Experiment, a database row)


def parse_ref(ref: str) -> tuple[str | None, str]:
    """("id" | "name" | None, value)."""
    for kind in ("id", "name"):
        if ref.startswith(kind + ":"):
            return kind, ref[len(kind) + 1 :]
    return None, ref


def pick_experiment(ref: str, by_id: Callable[[str], T | None], by_name: Callable[[str], T | None], where: str) -> T:
    kind, value = parse_ref(ref)
    with_id = by_id(value) if kind in (None, "id") else None
    with_name = by_name(value) if kind in (None, "name") else None
    if with_id is not None and with_name is not None and str(with_id.experiment_id) != str(with_name.experiment_id):
        raise BadInputError(
            f"--experiment {ref!r} is ambiguous in {where}: {value!r} is the id of experiment {with_id.name!r}"
            f" and the name of experiment {with_name.experiment_id}; say id:{value} or name:{value}"
        )
    found = with_id if with_id is not None else with_name
    if found is None:
        what = {"id": "with id", "name": "named", None: "named or with id"}[kind]
        raise BadInputError(f"no experiment {what} {value!r} in {where}")
    return found
