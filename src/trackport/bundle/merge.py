"""The bundle parts of a sharded export made into one bundle (`trackport bundle merge`).

Each part is a complete bundle of the plan's source holding exactly one shard's runs; which
shard a part is, is told by its runs, so parts need no marker and may be named anything.
One more part may hold the registry (`export SOURCE PART --models-only`): it is not sharded. A
part that is missing, incomplete or holds another shard's runs is refused before anything
is written, naming the shard and the command that makes it. Files are hard-linked into the
merged bundle where the file system allows (no second copy of the artifacts), else copied;
an experiment's document, written by every shard that holds its runs, is taken from the
lowest shard, and a difference between shards (the experiment changed while they ran) is
reported. The merged bundle is built beside OUT under a temporary name and renamed into
place after its manifest is written, so a killed merge leaves no OUT, and runs again.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from trackport.bundle import descriptor, spans
from trackport.bundle.layout import (
    EXPERIMENT_FILE, EXPERIMENTS_DIR, MANIFEST_FILE, ROOT_FILE, SPANS_FILE, TRANSFER_DIR, UNITS_DIR, write_json_atomic,
)
from trackport.bundle.manifest import parse_line, write_manifest
from trackport.errors import BadInputError

_CONCATENATED = ("ledger.jsonl", "idmap.jsonl", "transfers.jsonl")  # transfer/: each part's lines, in shard order


@dataclass(frozen=True)
class Part:
    path: Path
    root: dict
    entries: dict[str, tuple[int, str]]  # manifest path -> (size, sha256)
    run_ids: frozenset[str]


@dataclass
class MergeResult:
    out: Path
    parts: int
    files: int = 0
    linked: int = 0
    counts: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def merge_parts(
    out: Path, part_paths: list[Path], shard_runs: list[frozenset[str]], *, source_uri: str, selection: dict,
    plan_id: str, plan_path: str,
) -> MergeResult:
    """shard_runs[k]: the run ids of shard k of the plan."""
    if out.exists() or out.is_symlink():
        raise BadInputError(f"{out} exists; merge into a new path")
    parts = [_read_part(Path(p)) for p in part_paths]
    by_shard = _assign([p for p in parts if p.run_ids or not _is_registry(p)], shard_runs, source_uri, plan_path)
    registries = [p for p in parts if not p.run_ids and _is_registry(p)]
    if len(registries) > 1:
        raise BadInputError(f"{registries[0].path} and {registries[1].path} both hold the registry; give one")
    for part in registries:
        _check_source(part, source_uri)
    staging = out.parent / f".{out.name}.merging"
    if staging.exists():  # a killed merge's: only merge makes this name
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    result = MergeResult(out, len(parts))
    taken: dict[str, tuple[int, str, int]] = {}  # path -> (size, sha256, shard)
    spans_parts: dict[str, list[Path]] = {}  # experiments/<E>/spans.parquet -> the parts' files
    for k, part in enumerate(by_shard + registries):  # the registry's part last: it refers to the shards' runs
        for rel, (size, sha) in part.entries.items():
            if rel in (ROOT_FILE, MANIFEST_FILE) or rel.startswith(TRANSFER_DIR + "/"):
                continue
            if _is_spans_file(rel):  # each part's spans of the experiment's traces: one file made of them below
                spans_parts.setdefault(rel, []).append(part.path / rel)
                continue
            held = taken.get(rel)
            if held is not None:
                if held[1] != sha:
                    result.notes.append(_difference(rel, held[2], k, len(by_shard)))
                continue
            taken[rel] = (size, sha, k)
            result.linked += _link_or_copy(part.path / rel, staging / rel)
            result.files += 1
    for rel, files in spans_parts.items():
        spans.consolidate((staging / rel).parent, files, force=True)
        result.files += 1
    (staging / TRANSFER_DIR).mkdir(exist_ok=True)
    for name in _CONCATENATED:
        with open(staging / TRANSFER_DIR / name, "wb") as joined:
            for part in by_shard + registries:
                if f"{TRANSFER_DIR}/{name}" in part.entries:
                    with open(part.path / TRANSFER_DIR / name, "rb") as lines:
                        shutil.copyfileobj(lines, joined)
    result.counts = _counts(by_shard + registries, taken)
    root = descriptor.build_root(by_shard[0].root["source"], selection, counts=result.counts)
    root["merged_from"] = {"plan_id": plan_id, "shards": len(by_shard), "registry": bool(registries)}
    write_json_atomic(staging / ROOT_FILE, root)
    write_manifest(staging)
    os.rename(staging, out)
    return result


def _read_part(path: Path) -> Part:
    root = descriptor.load_root(path)
    if root.get("counts") is None or not (path / MANIFEST_FILE).is_file():
        raise BadInputError(f"{path}: the export of this part did not finish; run its shard again")
    entries: dict[str, tuple[int, str]] = {}
    with open(path / MANIFEST_FILE, "rb") as manifest:
        for number, raw in enumerate(manifest, 1):
            entry, problem = parse_line(raw.rstrip(b"\n"))
            if entry is None:
                raise BadInputError(f"{path / MANIFEST_FILE}: line {number} {problem}")
            entries[entry.path] = (entry.size, entry.sha256)
    runs = frozenset(
        rel.split("/")[3] for rel in entries
        if rel.startswith(EXPERIMENTS_DIR + "/") and rel.count("/") == 4 and rel.endswith("/run.json")
    )
    return Part(path, root, entries, runs)


def _is_registry(part: Part) -> bool:
    """A part of no runs that holds the workspace's units: `export SOURCE PART --models-only`,
    made beside the shards (the registry is not sharded: docs/scale-out.md)."""
    return bool(part.root.get("selection", {}).get("models_only")) and any(rel.startswith(UNITS_DIR + "/") for rel in part.entries)


def _assign(parts: list[Part], shard_runs: list[frozenset[str]], source_uri: str, plan_path: str) -> list[Part]:
    """The parts in shard order; BadInputError naming what is missing, foreign or twice."""
    of_run = {run: k for k, runs in enumerate(shard_runs) for run in runs}
    by_shard: dict[int, Part] = {}
    for part in parts:
        _check_source(part, source_uri)
        shards = {of_run.get(run) for run in part.run_ids}
        if None in shards:
            stray = sorted(r for r in part.run_ids if r not in of_run)[:3]
            raise BadInputError(f"{part.path} holds runs the plan does not ({', '.join(stray)}); it is not a part of this plan")
        if len(shards) != 1:
            raise BadInputError(f"{part.path} holds the runs of shards {sorted(shards)}; a part holds one shard")
        (k,) = shards
        if k in by_shard:
            raise BadInputError(f"{by_shard[k].path} and {part.path} are both shard {k}; give each shard once")
        lacking = len(shard_runs[k] - part.run_ids)
        if lacking:
            raise BadInputError(
                f"{part.path} (shard {k}) lacks {lacking} of its {len(shard_runs[k])} runs; run"
                f" `trackport export --plan {plan_path} --shard {k} {part.path}` again to finish it"
            )
        by_shard[k] = part
    missing = [k for k in range(len(shard_runs)) if k not in by_shard]
    if missing:
        raise BadInputError(
            f"shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {len(shard_runs)} missing:"
            f" run `trackport export --plan {plan_path} --shard {missing[0]} PART` and give its part to the merge"
        )
    return [by_shard[k] for k in range(len(shard_runs))]


def _check_source(part: Part, source_uri: str) -> None:
    uri = (part.root.get("source") or {}).get("uri")
    if uri != source_uri:
        raise BadInputError(f"{part.path} is an export of {uri!r}, not of the plan's source {source_uri!r}")


def _link_or_copy(source: Path, target: Path) -> int:
    """1 when hard-linked, 0 when copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)
        return 1
    except OSError:
        shutil.copyfile(source, target, follow_symlinks=False)
        return 0


def _difference(rel: str, first: int, other: int, shards: int) -> str:
    what = f"experiment {rel.split('/')[1]}" if rel.endswith("/" + EXPERIMENT_FILE) else rel
    name = lambda k: f"shard {k}" if k < shards else "the registry part"  # noqa: E731
    return f"{what} differs between {name(first)} and {name(other)} (it changed while they ran); {name(first)}'s is kept"


def _counts(parts: list[Part], taken: dict) -> dict:
    """The parts' counts summed; experiments counted once however many shards hold them."""
    counts: dict[str, int] = {}
    for part in parts:
        for key, value in part.root["counts"].items():
            counts[key] = counts.get(key, 0) + value
    counts["experiments"] = sum(1 for rel in taken if rel.count("/") == 2 and rel.endswith("/" + EXPERIMENT_FILE))
    return counts


def _is_spans_file(rel: str) -> bool:
    parts = rel.split("/")
    return len(parts) == 3 and parts[0] == EXPERIMENTS_DIR and parts[2] == SPANS_FILE
