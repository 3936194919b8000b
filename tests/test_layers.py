"""The package's import graph: layers point one way, no cycles, no private names across modules.

Every import counts, those inside functions too (a lazy import is still a dependency). The layer order is the
data flow of docs/architecture.md: a module may import from its own layer and the layers before it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder on disk -> the package it installs as (pyproject.toml's package-dir)
PACKAGE_DIRS = {"seqrec": "seqrec", "rl": "seqrec.rl", "datasets": "seqrec.datasets"}

# lowest first; a module may import only from its own layer or a lower one
LAYERS: tuple[tuple[str, ...], ...] = (
    ("seqrec.core",),          # config loading and validators, atomic writes: no torch
    ("seqrec.datasets",),      # events -> prepared dataset: no torch
    ("seqrec.models",),        # encoders, catalogue kernels, devices
    ("seqrec.rl",),            # Q-learning, bandits, off-policy evaluation, d3rlpy bridge
    ("seqrec.training",),      # sampler, checkpoints, the fit loop, evaluation, distributed
    ("seqrec.retrieval",),     # two-tower, features, index, re-ranking
    ("seqrec.nudging",),       # nudge catalogue, decisions, bandit fitting, OPE inputs
    ("seqrec.runs",),          # run config, building a learner, reading and writing a run folder, training a run
    ("seqrec.serve",),         # scoring bundle, score_batch, local and Ray engines
    ("seqrec.campaign",),      # simulator, population, policies, the UCI check
    ("seqrec.abtest",),        # the simulated A/B test
    ("seqrec.api",),           # the notebook API and the demo
    ("seqrec.cli", "seqrec.__main__", "seqrec"),  # commands; the root package (lazy API only)
)
TORCH_FREE = ("seqrec.core", "seqrec.datasets")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    pkg = PACKAGE_DIRS[rel.parts[0]]
    parts = [*pkg.split("."), *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for d in PACKAGE_DIRS for p in sorted((ROOT / d).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, str | None, int, bool]]:
    """(imported module, imported name or None, line, at module level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:  # `from package import module`
                    out.append((sub, None, node.lineno, id(node) in top))
                else:
                    out.append((base, a.name, node.lineno, id(node) in top))
    return out


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len and not (
                    p == "seqrec" and module != "seqrec"):
                best, best_len = i, len(p)
    return best


def graph() -> dict[str, list[tuple[str, str | None, int, bool]]]:
    mods = package_modules()
    known = set(mods)
    return {m: [(t, n, line, top) for t, n, line, top in imports_of(m, p, known)] for m, p in mods.items()}


def upward_imports(g: dict) -> list[str]:
    bad = []
    for m, edges in g.items():
        lm = layer_of(m)
        if lm is None:
            bad.append(f"{m}: in no layer (add its package to LAYERS)")
            continue
        for target, _, line, _ in edges:
            if not target.startswith("seqrec"):
                continue
            lt = layer_of(target)
            if lt is not None and lt > lm:
                bad.append(f"{m}:{line} imports {target} from a higher layer")
    return bad


def cycles(g: dict) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over edges between package modules."""
    edges = {m: sorted({t for t, _, _, _ in es if t in g and t != m}) for m, es in g.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def private_imports(g: dict) -> list[str]:
    return [f"{m}:{line} imports {n} from {t}" for m, es in g.items() for t, n, line, _ in es
            if n and n.startswith("_") and not n.startswith("__") and t.startswith("seqrec") and t != m]


def test_every_module_is_in_a_layer_and_imports_only_down() -> None:
    assert upward_imports(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_no_private_name_is_imported_across_modules() -> None:
    assert private_imports(graph()) == []


def test_torch_free_layers_import_no_torch() -> None:
    bad = [f"{m}:{line} imports {t}" for m, es in graph().items() if m.startswith(TORCH_FREE)
           for t, _, line, _ in es if t.split(".")[0] in ("torch", "d3rlpy")]
    assert bad == []


def test_root_package_imports_nothing_at_import_time() -> None:
    """Every `import seqrec.x` runs seqrec/__init__.py first: it may reach the API only lazily."""
    eager = [t for t, _, _, top in graph()["seqrec"] if top and t.startswith("seqrec")]
    assert eager == []


# the checks themselves, on small made-up graphs: they must catch what they are for
@pytest.mark.parametrize("g, expect", [
    ({"seqrec.models.encoders": [("seqrec.runs.config", "RunConfig", 3, True)], "seqrec.runs.config": []},
     ["seqrec.models.encoders:3 imports seqrec.runs.config from a higher layer"]),
    ({"seqrec.datasets.prepare": [("seqrec.training.loop", None, 9, False)], "seqrec.training.loop": []},
     ["seqrec.datasets.prepare:9 imports seqrec.training.loop from a higher layer"]),
    ({"seqrec.runs.train": [("seqrec.models.encoders", "EncoderConfig", 1, True)], "seqrec.models.encoders": []}, []),
    ({"seqrec.newthing": []}, ["seqrec.newthing: in no layer (add its package to LAYERS)"]),
])
def test_upward_import_check_catches_an_upward_import(g: dict, expect: list[str]) -> None:
    assert upward_imports(g) == expect


def test_cycle_check_catches_a_cycle_even_through_a_function_level_import() -> None:
    g = {"seqrec.serve.engines": [("seqrec.serve.ray_engine", None, 100, False)],
         "seqrec.serve.ray_engine": [("seqrec.serve.engines", "ScoreJob", 5, True)],
         "seqrec.serve.scoring": [("seqrec.serve.engines", None, 1, True)]}
    assert cycles(g) == [["seqrec.serve.engines", "seqrec.serve.ray_engine"]]
    del g["seqrec.serve.engines"][0]
    assert cycles(g) == []


def test_private_check_catches_a_private_name() -> None:
    g = {"seqrec.retrieval.rerank": [("seqrec.runs.train", "_open_run_folder", 7, True),
                                     ("seqrec.retrieval.rerank", "_zscore", 8, False)]}
    assert private_imports(g) == ["seqrec.retrieval.rerank:7 imports _open_run_folder from seqrec.runs.train"]


def test_real_graph_is_read_with_function_level_imports() -> None:
    """The parser sees imports inside functions (not only at the top): today's CLI imports commands lazily."""
    g = graph()
    assert any(not top for es in g.values() for _, _, _, top in es)
    assert "seqrec.datasets.prepare" in g


def test_pyproject_lists_every_package() -> None:
    """A non-editable install copies only the packages pyproject.toml names: a new subpackage must be listed."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {module_name(p) for d in PACKAGE_DIRS for p in (ROOT / d).rglob("__init__.py")}
    assert on_disk == listed
