"""The package's own imports stay at module top, so the import graph is the real one.

Function-level imports of our own modules hid three import cycles (129 of them before
the reorganisation); `lint-imports` (the contracts in pyproject.toml) only sees a cycle
that is written down. Two exceptions, each for start-up time:

* ``cli.py`` imports the library inside each command, so ``ci-compress --help`` starts
  without torch, mlflow, numpy or pydantic (``tests`` check that too);
* a module that loads torch when imported (it imports torch at top, or imports such a
  module at top) may be imported on use, so the config loader and the pass table stay
  torch-free (``ci-compress validate`` and ``schema`` do not pay for torch).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ci_compress"
COLD_START = {"ci_compress.cli", "ci_compress.__init__"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__") or "ci_compress"


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py")}


def top_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported at module level (not under ``if TYPE_CHECKING``)."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def torch_bearing(trees: dict[str, ast.Module]) -> set[str]:
    """Our modules whose import loads torch: a fixed point over top-level imports."""
    heavy = {
        name
        for name, tree in trees.items()
        if any(m == "torch" or m.startswith("torch.") for m in top_level_imports(tree))
    }
    while True:
        more = {
            name
            for name, tree in trees.items()
            if name not in heavy and top_level_imports(tree) & heavy
        }
        if not more:
            return heavy
        heavy |= more


def function_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [f"{node.module}.{a.name}" for a in node.names]
                    out += [(node.lineno, n) for n in names if n.startswith("ci_compress")]
                elif isinstance(node, ast.Import):
                    out += [
                        (node.lineno, a.name)
                        for a in node.names
                        if a.name.startswith("ci_compress")
                    ]
    return out


def test_internal_imports_are_at_module_top() -> None:
    trees = modules()
    heavy = torch_bearing(trees)
    offenders = []
    for name, tree in sorted(trees.items()):
        if name in COLD_START:
            continue
        for line, imported in function_level_imports(tree):
            target = imported if imported in trees else imported.rpartition(".")[0]
            if target not in heavy:
                offenders.append(f"{name}:{line} imports {imported} inside a function")
    assert not offenders, "\n".join(offenders)


def test_the_config_and_the_pass_table_stay_torch_free() -> None:
    heavy = torch_bearing(modules())
    light = {
        "ci_compress.config",
        "ci_compress.passes.registry",
        "ci_compress.passes.base",
        "ci_compress.gate",
        "ci_compress.report",
        "ci_compress.reporting.render",
        "ci_compress.tracking",
    }
    assert not light & heavy, f"these modules load torch on import: {sorted(light & heavy)}"


def test_the_public_api_is_lazy() -> None:
    """``import ci_compress`` loads nothing heavy; each public name resolves on first use."""
    import subprocess
    import sys

    code = (
        "import sys, ci_compress\n"
        "heavy = [m for m in ('torch', 'mlflow', 'numpy', 'pydantic') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "for name in ci_compress.__all__:\n"
        "    assert getattr(ci_compress, name) is not None, name\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr
