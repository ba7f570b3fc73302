"""The import contract: layers import downward only, and no module imports itself back through others.

Lowest to highest (README, "The layers"):

    calibration  <  monitor.model  <  monitor.audio  <  monitor.live  <  monitor.history  <  monitor.serve
                 <  monitor (cli, api, package root)  <  training

Every import counts, including those inside functions (a lazy import is still
a dependency, and it is where cycles used to hide). Run ``python -m pytest
tests/test_layers.py``; ``test_the_checker_catches_an_upward_import_and_a_cycle``
shows it fails on a deliberate violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("calibration", "monitor", "training")
LAYERS = (
    "calibration",
    "monitor.model",
    "monitor.audio",
    "monitor.live",
    "monitor.history",
    "monitor.serve",
    "monitor",
    "training",
)
#: The mathematics layer is usable without the deep-learning and networking stack.
FORBIDDEN_IN_CALIBRATION = ("torch", "transformers", "websockets", "soundfile", "sounddevice", "monitor", "training")


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific layer prefix of ``module``."""
    best = -1
    for i, name in enumerate(LAYERS):
        if (module == name or module.startswith(name + ".")) and (best < 0 or len(name) > len(LAYERS[best])):
            best = i
    if best < 0:
        raise ValueError(f"{module} belongs to no layer")
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, relative ones resolved, names that are modules kept."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, node.lineno))
            out += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]  # `from pkg import module`
    return out


def project_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, Path], list[tuple[str, str, int]]]:
    """(module -> imported project modules, module -> file, every (importer, imported, line))."""
    files = {module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")
             if (root / pkg).is_dir()}
    graph: dict[str, set[str]] = {m: set() for m in files}
    edges = []
    for module, path in files.items():
        for target, line in imports_of(path, module):
            if target in files and target != module:
                graph[module].add(target)
                edges.append((module, target, line))
            elif target.split(".")[0] in FORBIDDEN_IN_CALIBRATION and module.split(".")[0] == "calibration":
                edges.append((module, target, line))
    return graph, files, edges


def violations(root: Path = ROOT) -> list[str]:
    graph, files, edges = project_graph(root)
    found = []
    for src, dst, line in edges:
        where = f"{files[src].relative_to(root)}:{line}"
        if src.split(".")[0] == "calibration" and dst.split(".")[0] in FORBIDDEN_IN_CALIBRATION:
            found.append(f"{where}: calibration imports {dst} (the mathematics layer stays free of it)")
        elif dst in files and layer_of(dst) > layer_of(src):
            found.append(f"{where}: {src} ({LAYERS[layer_of(src)]}) imports {dst} ({LAYERS[layer_of(dst)]}), "
                         "a higher layer")
    found += [f"import cycle: {' -> '.join(c + [c[0]])}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_go_downward_only_and_no_module_imports_itself_back():
    problems = violations()
    assert not problems, "\n".join(problems)


def test_package_roots_import_nothing_eagerly():
    """``import monitor.model`` must not pull in the live app: package roots hold no module-level project imports."""
    for pkg in ("monitor", *(f"monitor/{d}" for d in ("model", "audio", "live", "history", "serve")), "calibration",
                "training"):
        tree = ast.parse((ROOT / pkg / "__init__.py").read_text())
        eager = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                 and any(((getattr(n, "module", None) or "") + a.name).startswith(PACKAGES) or
                         (getattr(n, "module", None) or "").startswith(PACKAGES) for a in n.names)]
        assert not eager, f"{pkg}/__init__.py imports project modules at load time"


def test_the_checker_catches_an_upward_import_and_a_cycle(tmp_path):
    """A deliberate violation in a copy of the layout: the contract must report it."""
    for folder in ("calibration", "monitor/model", "monitor/live", "training"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "calibration" / "maths.py").write_text("import numpy\n")
    (tmp_path / "monitor" / "model" / "head.py").write_text("from calibration import maths\n")
    (tmp_path / "monitor" / "live" / "pipeline.py").write_text("from monitor.model import head\n")
    (tmp_path / "training" / "build.py").write_text("import monitor.live.pipeline\n")
    assert violations(tmp_path) == []
    # upward: the model layer reaching into the live pipeline, inside a function
    (tmp_path / "monitor" / "model" / "bundle.py").write_text("def f():\n    from monitor.live.pipeline import x\n")
    # calibration reaching for torch
    (tmp_path / "calibration" / "reducer.py").write_text("import torch\n")
    # a cycle inside one layer
    (tmp_path / "monitor" / "live" / "a.py").write_text("from monitor.live import b\n")
    (tmp_path / "monitor" / "live" / "b.py").write_text("def g():\n    import monitor.live.a\n")
    found = violations(tmp_path)
    assert any("monitor/model/bundle.py:2" in v and "a higher layer" in v for v in found), found
    assert any("calibration/reducer.py:1" in v and "torch" in v for v in found), found
    assert any(v.startswith("import cycle") and "monitor.live.a" in v and "monitor.live.b" in v for v in found), found
