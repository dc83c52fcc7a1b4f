"""The packages import one way (docs/design-decisions.md, "Layers"): every import in src/,
lazy ones inside functions included, goes to a lower layer or stays inside its own package;
the store adapters, the bundle format and the engine never import each other. Also: no
module over the size limit."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first. A module may import from lower layers and from its own entry; the entries
# of one layer are independent of each other.
LAYERS = [
    ["trackport.errors"],
    ["trackport.domain", "trackport.config", "trackport._files", "trackport.kinds", "trackport.locking", "trackport.renames", "trackport.s3"],
    ["trackport.stores.base", "trackport.provenance", "trackport.models", "trackport.traces", "trackport.genai", "trackport.editing"],
    ["trackport.search", "trackport.fingerprint", "trackport.patching"],
    ["trackport.selection"],
    ["trackport.transfer", "trackport.stores", "trackport.bundle", "trackport.runs"],
    ["trackport.opening"],
    ["trackport.samples", "trackport.spark"],
    ["trackport.demo"],
    ["trackport.cli"],
]
LIMIT = 420  # lines: "about 400"


def _entry(module: str) -> tuple[int, str] | None:
    """(layer, entry) of the longest entry that module is or is inside."""
    best = None
    for layer, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > len(best[1])):
                best = (layer, entry)
    return best


def _modules(src: Path = SRC) -> list[tuple[str, Path]]:
    found = []
    for path in sorted((src / "trackport").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    return found


def _imports(module: str, path: Path, src: Path) -> list[tuple[int, str]]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.append((node.lineno, target))
            # `from trackport.x import y` may name a module y: judge that one too
            names += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if _is_module(src, f"{target}.{alias.name}")]
    return [(line, name) for line, name in names if name == "trackport" or name.startswith("trackport.")]


def _is_module(src: Path, name: str) -> bool:
    path = src.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(src: Path = SRC) -> list[str]:
    wrong = []
    for module, path in _modules(src):
        mine = _entry(module)
        if mine is None:
            if module != "trackport":
                wrong.append(f"{module}: in no layer; add it to LAYERS in tests/test_layering.py")
            continue
        for line, name in _imports(module, path, src):
            theirs = _entry(name)
            if theirs is None or theirs[1] == mine[1]:
                continue
            if theirs[0] >= mine[0]:
                wrong.append(f"{path.relative_to(src)}:{line}: {module} ({mine[1]}) imports {name} ({theirs[1]})")
    return wrong


def test_packages_import_one_way():
    assert violations() == []


def test_the_check_finds_a_wrong_import(tmp_path):
    """The check can fail: a store adapter importing the engine is reported."""
    fake = tmp_path / "src"
    (fake / "trackport" / "stores").mkdir(parents=True)
    (fake / "trackport" / "transfer").mkdir(parents=True)
    (fake / "trackport" / "__init__.py").write_text("")
    (fake / "trackport" / "stores" / "__init__.py").write_text("")
    (fake / "trackport" / "transfer" / "__init__.py").write_text("")
    (fake / "trackport" / "transfer" / "engine.py").write_text("")
    (fake / "trackport" / "stores" / "bad.py").write_text("def f():\n    from trackport.transfer import engine\n")
    assert violations(fake) == [
        "trackport/stores/bad.py:2: trackport.stores.bad (trackport.stores) imports trackport.transfer (trackport.transfer)",
        "trackport/stores/bad.py:2: trackport.stores.bad (trackport.stores) imports trackport.transfer.engine (trackport.transfer)",
    ]


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_no_module_over_the_size_limit(module, path):
    lines = len(path.read_text().splitlines())
    assert lines <= LIMIT, f"{path.relative_to(SRC)} has {lines} lines; split it by concern"
