"""The import rules of docs/ARCHITECTURE.md, checked on the source (ast, no imports executed)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "stemseg_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the stemseg_jax modules it imports (anywhere in the file, lazy imports included)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        out[_module_name(path)] = {n for n in names if n.startswith("stemseg_jax")}
    return out


IMPORTS = _imports()


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("package, forbidden", [
    ("io", {"data", "evaluation", "model", "train", "inference", "benchmarks", "methods", "losses"}),
    ("results", {"data", "evaluation", "model", "train", "inference", "benchmarks", "methods", "losses"}),
    ("data", {"model", "train", "inference", "benchmarks", "methods", "losses", "evaluation"}),
    ("evaluation", {"model", "train", "inference", "benchmarks", "methods", "losses", "data"}),
    ("benchmarks", {"model", "train", "inference", "methods", "losses"}),
    ("model", {"train", "inference", "benchmarks", "methods", "data", "evaluation", "losses"}),
    ("losses", {"train", "inference", "benchmarks", "methods", "data", "evaluation"}),
    # The baselines' pieces: trackers are pure NumPy over proposals; the networks know no benchmark or method.
    ("tracking", {"data", "evaluation", "model", "train", "inference", "benchmarks", "methods", "losses",
                  "proposals", "reid"}),
    ("proposals", {"inference", "benchmarks", "methods", "losses", "evaluation", "tracking", "reid"}),
    ("reid", {"inference", "benchmarks", "methods", "losses", "evaluation", "tracking", "proposals"}),
])
def test_packages_import_one_way(package, forbidden):
    bad = sorted((mod, imp) for mod, imps in IMPORTS.items() if _top(mod) == package
                 for imp in imps if _top(imp) in forbidden)
    assert not bad, f"{package} must not import {sorted(forbidden)}: {bad}"


def test_no_cross_package_import_of_a_private_module():
    bad = []
    for mod, imps in IMPORTS.items():
        for imp in imps:
            private = [p for p in imp.split(".")[1:] if p.startswith("_") and p != "__init__"]
            if private and _top(imp) != _top(mod):
                bad.append((mod, imp))
    assert not bad, bad


def _benchmark_comparisons(source: str) -> list[str]:
    """``x == "name"`` / ``!=`` / ``in (...)`` comparisons where ``x`` names a benchmark (the chains that
    ``benchmarks.BENCHMARKS`` replaces)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any("benchmark" in ast.unparse(s) for s in sides if isinstance(s, (ast.Name, ast.Attribute))) and \
                    any(isinstance(s, (ast.Constant, ast.Tuple, ast.List, ast.Set)) for s in sides):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_chain_detector_sees_chains():
    assert _benchmark_comparisons('if config.inference.benchmark == "davis":\n    pass')
    assert _benchmark_comparisons('x = benchmark in ("davis", "ytvis")')
    assert not _benchmark_comparisons('b = BENCHMARKS[config.inference.benchmark]')


def test_no_benchmark_name_chains_outside_the_benchmarks_package():
    bad = []
    for path in list(PACKAGE.rglob("*.py")) + list((PACKAGE.parent / "tools").glob("*.py")):
        if "benchmarks" not in path.parts:
            bad += [f"{path.relative_to(PACKAGE.parent)}:{hit}" for hit in _benchmark_comparisons(path.read_text())]
    assert not bad, bad
