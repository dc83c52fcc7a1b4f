"""How names change on the way into a target.

Experiments: `--rename-experiment OLD=NEW`, `--rename-experiment-prefix OLD=NEW`, or
`--target-experiment NAME` (every run into that one experiment, a deliberate merge).
Registered models and prompts: `--rename-model OLD=NEW`, `--rename-model-prefix OLD=NEW`.
Both from a mapping file (`--rename-file FILE`). An exact name first, else the longest
matching prefix, else the name as it is. Ids, provenance of runs and the id map are not
touched: every run stays tied to its source run (trackport.transfer.renamed_units applies
model renames to the units a sink is handed)."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from trackport.errors import BadInputError

Pairs = tuple[tuple[str, str], ...]
KINDS = ("experiment", "model")  # what a mapping file's rows rename


@dataclass(frozen=True)
class Renames:
    names: Pairs = ()  # experiments: (old name, new name)
    prefixes: Pairs = ()  # experiments: (old prefix, new prefix)
    target: str | None = None  # --target-experiment: every experiment's runs go into this one
    models: Pairs = ()  # registered models and prompts: (old name, new name)
    model_prefixes: Pairs = ()

    def __post_init__(self) -> None:
        for old, new in self.names + self.prefixes + self.models + self.model_prefixes:
            if not old or not new:
                raise BadInputError(f"a rename needs both sides, OLD=NEW (got {old!r}={new!r})")
        for what, pairs in (("experiment", self.names), ("model", self.models)):
            olds = [old for old, _ in pairs]
            twice = sorted({old for old in olds if olds.count(old) > 1})
            if twice:
                raise BadInputError(f"{what} {twice[0]!r} is renamed twice; give one new name")
        if self.target is not None:
            if not self.target.strip():
                raise BadInputError("--target-experiment needs a name")
            if self.names or self.prefixes:
                raise BadInputError(
                    "--target-experiment puts every run into one experiment; it cannot be combined with"
                    " experiment renames (--rename-experiment, --rename-experiment-prefix, a file's experiments)"
                )

    def __bool__(self) -> bool:
        return bool(self.names or self.prefixes or self.target is not None or self.renames_models)

    @property
    def renames_models(self) -> bool:
        return bool(self.models or self.model_prefixes)

    def experiment(self, name: str) -> str:
        """The name the experiment takes in the target."""
        if self.target is not None:
            return self.target
        return _renamed(name, self.names, self.prefixes)

    def model(self, name: str) -> str:
        """The name a registered model (or prompt) takes in the target."""
        return _renamed(name, self.models, self.model_prefixes)

    def check(self, names: Iterable[str]) -> None:
        """Refuse renames that would put two of these source experiments into one target
        experiment (nothing is written yet); --target-experiment merges on purpose."""
        if self.target is None:
            _refuse_merges("experiments", names, self.experiment)

    def check_models(self, names: Iterable[str]) -> None:
        """Refuse renames that would write two of these source models as one."""
        _refuse_merges("registered models", names, self.model)

    def merged(self, other: "Renames") -> "Renames":
        return Renames(
            self.names + other.names, self.prefixes + other.prefixes, self.target or other.target,
            self.models + other.models, self.model_prefixes + other.model_prefixes,
        )

    @classmethod
    def from_file(cls, path: Path) -> "Renames":
        """A mapping file of names (prefixes are given on the command line):

        - JSON: `{"old": "new", ...}` (experiments), or `{"experiments": {...}, "models": {...}}`;
        - CSV with the header `old,new` (experiments), or `old,new,kind` where kind is
          `experiment` (also when empty) or `model`."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BadInputError(f"--rename-file {path}: {exc.strerror}") from None
        if path.suffix.lower() == ".json":
            return cls._from_json(path, text)
        rows = list(csv.reader(text.splitlines()))
        header = [c.strip().lower() for c in rows[0]] if rows else []
        if header not in (["old", "new"], ["old", "new", "kind"]):
            raise BadInputError(f"--rename-file {path}: expected a CSV whose header is old,new or old,new,kind (or a .json file)")
        found: dict[str, list[tuple[str, str]]] = {kind: [] for kind in KINDS}
        for line, row in enumerate(rows[1:], 2):
            if not row:
                continue
            if len(row) not in (2, len(header)):
                raise BadInputError(f"--rename-file {path}, line {line}: expected the columns {','.join(header)}")
            kind = (row[2].strip().lower() if len(row) > 2 else "") or "experiment"
            if kind not in KINDS:
                raise BadInputError(f"--rename-file {path}, line {line}: kind {row[2]!r} is neither experiment nor model")
            found[kind].append((row[0], row[1]))
        return cls(tuple(found["experiment"]), models=tuple(found["model"]))

    @classmethod
    def _from_json(cls, path: Path, text: str) -> "Renames":
        try:
            mapping = json.loads(text)
        except ValueError as exc:
            raise BadInputError(f"--rename-file {path}: not JSON ({exc})") from None
        if isinstance(mapping, dict) and any(isinstance(v, dict) for v in mapping.values()):
            sections = mapping
            if not set(sections) <= {"experiments", "models"} or not all(isinstance(v, dict) for v in sections.values()):
                raise BadInputError(f"--rename-file {path}: expected {{\"experiments\": {{old: new}}, \"models\": {{old: new}}}}")
        else:
            sections = {"experiments": mapping}
        for section in sections.values():
            if not isinstance(section, dict) or not all(isinstance(v, str) for v in section.values()):
                raise BadInputError(f"--rename-file {path}: expected JSON objects of old name -> new name")
        return cls(tuple(sections.get("experiments", {}).items()), models=tuple(sections.get("models", {}).items()))


def _renamed(name: str, exact: Pairs, prefixes: Pairs) -> str:
    for old, new in exact:
        if old == name:
            return new
    for old, new in sorted(prefixes, key=lambda pair: -len(pair[0])):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _refuse_merges(what: str, names: Iterable[str], rename) -> None:
    seen: dict[str, str] = {}
    for name in names:
        new = rename(name)
        if new in seen and seen[new] != name:
            raise BadInputError(f"{what} {seen[new]!r} and {name!r} would both be written as {new!r}; rename one of them otherwise")
        seen[new] = name
