"""Imports between bccdet's own modules run one way, down the layers (cli -> workflows -> pipeline -> adapters /
convert -> core), with no cycles.

Every ``import`` / ``from ... import`` of a bccdet module is counted, at the top of a module and inside its
functions alike: an import deferred into a function still ties the two modules together, and a cycle made of
such imports is one edit away from an ImportError at start-up.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "bccdet"

# Pairs of modules excused from the cycle check (none: bccdet.cli became a package without cycles). Add a pair
# here only while a split that removes its cycle is being finished.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module under bccdet/ (a package by its ``__init__.py``)."""
    out = {}
    for f in sorted((root / PKG).rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _is_package(mods: dict[str, Path], name: str) -> bool:
    return name in mods and mods[name].name == "__init__.py"


def _reexports(mods: dict[str, Path], pkg: str) -> dict[str, str]:
    """Names a package's ``__init__`` takes from its own submodules (``from .sub import name``) -> that submodule."""
    out = {}
    tree = ast.parse(mods[pkg].read_text(), str(mods[pkg]))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            src = _resolve_from(pkg, True, node)
            if src in mods and src != pkg and src.startswith(pkg + "."):
                for a in node.names:
                    out[a.asname or a.name] = src
    return out


def _resolve_from(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the bccdet modules it imports (anywhere in it). ``from pkg import name`` counts as an import
    of ``pkg.name`` when that is a module, of the submodule it comes from when ``pkg/__init__.py`` re-exports
    it, and of ``pkg`` itself otherwise."""
    mods = _modules(root)
    reexp = {p: _reexports(mods, p) for p in mods if _is_package(mods, p)}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve_from(mod, _is_package(mods, mod), node)
                for a in node.names:
                    if f"{src}.{a.name}" in mods:
                        targets.append(f"{src}.{a.name}")
                    elif a.name in reexp.get(src, {}):
                        targets.append(reexp[src][a.name])
                    else:
                        targets.append(src)
            for t in targets:
                while t and t not in mods:  # `import bccdet.x.y` of a name that is not a module: its package
                    t = t.rpartition(".")[0]
                if t.split(".")[0] == PKG and t != mod:
                    graph[mod].add(t)
    return graph


def _sccs(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(comp)
    return out


def _inside(a: str, pkg: str) -> bool:
    return a.startswith(pkg + ".")


def import_cycles(graph: dict[str, set[str]], known=KNOWN_CYCLES) -> list[list[str]]:
    """Groups of modules that import each other, other than a package with its own submodules (its
    ``__init__`` re-exporting them while they import from it) and the pairs in ``known``.

    A cycle is looked for twice: without the edges from a package to its own submodules, then without the
    edges from a submodule to a package above it. A cycle that needs both kinds of edge is the package's
    re-export; any other cycle shows in at least one of the two graphs."""
    def without(drop):
        return {a: {b for b in bs if not drop(a, b) and frozenset({a, b}) not in known} for a, bs in graph.items()}

    found = _sccs(without(lambda a, b: _inside(b, a))) + _sccs(without(lambda a, b: _inside(a, b)))
    return sorted({tuple(sorted(c)) for c in found})


def test_no_import_cycles_between_modules():
    graph = import_graph()
    assert "bccdet.adapters.sam" in graph and graph["bccdet.convert.common"]  # the walk saw the modules
    cycles = import_cycles(graph)
    detail = ["  " + " <-> ".join(c) + ":  " + "; ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c)
              for c in cycles]
    assert not cycles, "bccdet modules import each other:\n" + "\n".join(detail)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    """The check itself: a cycle made of function-level imports is found, a package's re-export is not."""
    pkg = tmp_path / PKG
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from . import a\n")
    (pkg / "c.py").write_text("from .sub import thing\n")
    (pkg / "sub" / "__init__.py").write_text("from .x import thing\nVALUE = 1\n")
    (pkg / "sub" / "x.py").write_text("from . import VALUE\nthing = VALUE\n")
    graph = import_graph(tmp_path)
    assert graph["bccdet.c"] == {"bccdet.sub.x"}
    assert import_cycles(graph, known=set()) == [("bccdet.a", "bccdet.b")]
    assert import_cycles(graph, known={frozenset({"bccdet.a", "bccdet.b"})}) == []


# The import rule (docs/architecture.md): each module imports only modules of its own layer or below.
# Layer of a module: the first prefix below that matches it (the longest prefixes are listed first).
LAYERS = [
    ("bccdet.cli", 5),                       # parses, calls one library function, prints
    ("bccdet.batch", 4), ("bccdet.classify", 4), ("bccdet.curate", 4),
    ("bccdet.analysis", 4),                  # workflows over many inputs
    ("bccdet.conversion", 4), ("bccdet.training", 4), ("bccdet.evaluation", 4),  # the convert / train / evaluate jobs
    ("bccdet.pipeline", 3),                  # the one place the stages are built and chained
    ("bccdet.adapters", 2),                  # one per framework (ultralytics, SAM, timm, FiftyOne)
    ("bccdet.convert", 2),                   # data-set formats: beside the adapters (SAM masks for labels;
                                             # FiftyOne reads and writes the YOLO layouts)
    ("bccdet", 1),                           # types, io, vocab, report, morphology, weights, runtime, defaults, ...
]
LAYER_NAMES = {5: "cli", 4: "workflows", 3: "pipeline", 2: "adapters / convert", 1: "core"}


def layer(module: str) -> int:
    for prefix, lev in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return lev
    raise AssertionError(module)


def test_imports_run_one_way_down_the_layers():
    """cli -> workflows (batch, classify, curate, analysis) -> pipeline -> adapters and convert -> core
    (types, io, vocab, report, ...); the package's own ``__init__`` (the library face) may re-export from
    any layer, and no module imports that face."""
    up = []
    for a, targets in sorted(import_graph().items()):
        if a == PKG:
            continue
        for b in sorted(targets):
            if b != PKG and layer(b) > layer(a):
                up.append(f"{a} ({LAYER_NAMES[layer(a)]}) imports {b} ({LAYER_NAMES[layer(b)]})")
            if b == PKG:
                up.append(f"{a} imports the package face bccdet (import the module it needs)")
    assert not up, "\n".join(up)


# Modules over ~500 lines, each with why it is one module (none may pass 700).
LONG_MODULES = {
    "bccdet/types.py": "the core type: Cells, its validation, indexing and every conversion (supervision, COCO, "
                       "YOLO, RLE) in one place, so that writers and adapters share one definition",
}


def test_modules_are_small():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in (ROOT / PKG).rglob("*.py")}
    assert not {m: n for m, n in sizes.items() if n > 700}, "modules over 700 lines"
    long = {m for m, n in sizes.items() if n > 520}
    assert long <= set(LONG_MODULES), f"over ~500 lines without a reason in LONG_MODULES: {sorted(long - set(LONG_MODULES))}"


# Options with a default in bccdet/defaults.py: no function or CLI option may spell the value again.
DEFAULTED = {"edge_sliver": "EDGE_SLIVER", "border": "BORDER", "tile": "TILE", "overlap": "TILE_OVERLAP",
             "scale": "SCALE"}


def test_each_default_is_written_once():
    """A parameter or typer option named as one of :data:`DEFAULTED` takes its default from defaults.py,
    never from a literal (a second literal would drift from the first)."""
    import bccdet.defaults as D

    literal = []
    for f in sorted((ROOT / PKG).rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        tree = ast.parse(f.read_text(), rel)
        for node in ast.walk(tree):
            pairs = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                pos = a.posonlyargs + a.args
                pairs += list(zip(pos[len(pos) - len(a.defaults):], a.defaults))
                pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
                for arg, default in pairs:
                    if arg.arg in DEFAULTED and isinstance(default, ast.Constant) and default.value is not None:
                        literal.append(f"{rel}:{default.lineno} {arg.arg}={default.value!r}")
                    # typer: name: T = typer.Option(<literal>, ...)
                    if (arg.arg in DEFAULTED and isinstance(default, ast.Call) and default.args
                            and getattr(default.func, "attr", "") == "Option" and isinstance(default.args[0], ast.Constant)
                            and default.args[0].value == getattr(D, DEFAULTED[arg.arg])):
                        literal.append(f"{rel}:{default.lineno} {arg.arg} typer.Option({default.args[0].value!r})")
    assert not literal, "defaults spelled as literals (use bccdet.defaults):\n" + "\n".join(literal)
