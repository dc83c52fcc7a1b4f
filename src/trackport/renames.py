"""How experiment names change on the way into a target (`--rename-experiment OLD=NEW`,
`--rename-experiment-prefix OLD=NEW`, `--rename-file FILE`): an exact name first, else the
longest matching prefix, else the name as it is. Ids, provenance and the id map are not
touched: every run stays tied to its source run."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from trackport.errors import BadInputError


@dataclass(frozen=True)
class Renames:
    names: tuple[tuple[str, str], ...] = ()  # (old name, new name)
    prefixes: tuple[tuple[str, str], ...] = ()  # (old prefix, new prefix)

    def __post_init__(self) -> None:
        for old, new in self.names + self.prefixes:
            if not old or not new:
                raise BadInputError(f"a rename needs both sides, OLD=NEW (got {old!r}={new!r})")
        olds = [old for old, _ in self.names]
        twice = sorted({old for old in olds if olds.count(old) > 1})
        if twice:
            raise BadInputError(f"experiment {twice[0]!r} is renamed twice; give one new name")

    def __bool__(self) -> bool:
        return bool(self.names or self.prefixes)

    def experiment(self, name: str) -> str:
        exact = dict(self.names)
        if name in exact:
            return exact[name]
        for old, new in sorted(self.prefixes, key=lambda pair: -len(pair[0])):
            if name.startswith(old):
                return new + name[len(old):]
        return name

    def check(self, names: Iterable[str]) -> None:
        """Refuse renames that would put two of these source experiments into one target
        experiment (nothing is written yet)."""
        seen: dict[str, str] = {}
        for name in names:
            new = self.experiment(name)
            if new in seen and seen[new] != name:
                raise BadInputError(
                    f"experiments {seen[new]!r} and {name!r} would both be written as {new!r}; rename one of them otherwise"
                )
            seen[new] = name

    def merged(self, other: "Renames") -> "Renames":
        return Renames(self.names + other.names, self.prefixes + other.prefixes)

    @classmethod
    def from_file(cls, path: Path) -> "Renames":
        """A mapping file: JSON `{"old": "new", ...}`, or CSV with the header `old,new`.
        Names only; prefixes are given on the command line."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BadInputError(f"--rename-file {path}: {exc.strerror}") from None
        if path.suffix.lower() == ".json":
            try:
                mapping = json.loads(text)
            except ValueError as exc:
                raise BadInputError(f"--rename-file {path}: not JSON ({exc})") from None
            if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
                raise BadInputError(f"--rename-file {path}: expected one JSON object of old name -> new name")
            return cls(tuple(mapping.items()))
        rows = list(csv.reader(text.splitlines()))
        if not rows or [c.strip().lower() for c in rows[0]] != ["old", "new"]:
            raise BadInputError(f"--rename-file {path}: expected a CSV whose header is old,new (or a .json file)")
        bad = next((i for i, row in enumerate(rows[1:], 2) if len(row) != 2), None)
        if bad is not None:
            raise BadInputError(f"--rename-file {path}, line {bad}: expected two columns, old,new")
        return cls(tuple((old, new) for old, new in rows[1:]))
