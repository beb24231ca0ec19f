"""Layers point one way: no module of tmrender imports a module of a higher layer, not even
inside a function (the order is written down in README.md, "Module map")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tmrender"

# lowest first; a module may import its own layer and the ones below
LAYERS: tuple[tuple[str, ...], ...] = (
    ("tmrender", "tmrender.config", "tmrender.errors", "tmrender.files", "tmrender.devices"),
    ("tmrender.diffusion", "tmrender.models"),
    ("tmrender.convert", "tmrender.media", "tmrender.faces"),
    ("tmrender.data",),
    ("tmrender.render",),
    ("tmrender.eval",),
    ("tmrender.train",),
    ("tmrender.serve",),
    ("tmrender.cli", "tmrender.__main__"),
)


def layer_of(module: str) -> int:
    """The layer of a dotted module name: its longest listed prefix."""
    best, depth = None, -1
    for level, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = level, name.count(".")
    assert best is not None, f"{module} is in no layer: add it to LAYERS and README.md"
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every tmrender module `path` imports, at any depth (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m == "tmrender" or m.startswith("tmrender.")}


def known(module: str) -> bool:
    """Whether `module` names a module or package of tmrender (not a name inside one)."""
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_every_module_is_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


def test_no_module_imports_a_higher_layer():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        for target in sorted(filter(known, imported_modules(path))):
            if layer_of(target) > layer_of(here):
                wrong.append(f"{here} (layer {layer_of(here)}) imports {target} "
                             f"(layer {layer_of(target)})")  # fmt: skip
    assert not wrong, "lower layers import higher ones:\n" + "\n".join(wrong)


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from tmrender.cli.app import app\n")
    assert "tmrender.cli.app" in imported_modules(source)
    assert layer_of("tmrender.cli.app") > layer_of("tmrender.models.dit")
