"""The package's import graph points one way: each module imports only from layers below it.

Read from the source (every ``import`` statement, including those inside
functions; imports only for type checking do not count), so a new arrow that
runs back up fails here rather than in a circular import months later.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "instseg"
# lowest first; a module may import from its own top-level part and from lower layers
LAYERS = [
    {"errors", "version"},
    {"config"},
    {"distributed"},
    {"cropped_masks"},
    {"masks"},
    {"structures"},
    {"measurements"},
    {"pictures"},
    {"data", "models"},
    {"eval"},
    {"engine", "tiled_inference"},
    {"importers", "predictor"},
    {"prompt_predictor"},
    {"export", "serve"},
    {"api"},
    {"demo", "launch"},
    {"cli", "__init__"},
    {"__main__"},
]
FAMILIES = {"fcos", "solov2", "mask2former", "sam"}  # family subpackages of models/: none imports another


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    names = list(rel.parts)
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def _runtime_imports(tree: ast.Module) -> list[str]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("instseg"):
            found += [node.module] if node.module != "instseg" else [f"instseg.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("instseg")]
    return found


def _graph() -> dict[str, list[str]]:
    return {
        _module_name(path): _runtime_imports(ast.parse(path.read_text()))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_every_top_level_module_has_a_layer():
    parts = {_part(module) for module in _graph()}
    assert parts == set().union(*LAYERS)


def test_no_import_runs_back_up():
    upward = []
    for module, imports in _graph().items():
        here = _part(module)
        for target in imports:
            there = _part(target)
            if there != here and _layer(there) >= _layer(here):
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_families_do_not_import_each_other_and_shared_parts_import_no_family():
    wrong = []
    for module, imports in _graph().items():
        parts = module.split(".")
        if len(parts) < 3 or parts[1] != "models":
            continue
        own = parts[2] if parts[2] in FAMILIES else None
        for target in imports:
            tparts = target.split(".")
            family = (
                tparts[2] if len(tparts) > 2 and tparts[1] == "models" and tparts[2] in FAMILIES else None
            )
            if family and family != own and module != "instseg.models.build":  # the registry names them all
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong
