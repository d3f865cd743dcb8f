"""Guard: the import direction of docs/design.md, "Layers and the import direction", lowest layer first:

    config, shard schema, fileio < kernels, media < models, diffusion, data < system
    < generate, metrics < distributed, tracking < checkpoint, EMA, engine
    < validation, provenance < training loop < launch

A module may import from lower layers and from its own package; never from a higher layer nor
from a sibling of its own layer (models, diffusion and data know nothing of each other).
``data_prep`` imports only the config, the shard schema, fileio and the media features.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"deepspeed", "mlflow", "ray"}

LAYERS = [
    ["svgen.config", "svgen.shards", "svgen.fileio"],
    ["svgen.kernels", "svgen.media"],
    ["svgen.models", "svgen.diffusion", "svgen.data"],
    ["svgen.system"],
    ["svgen.generate", "svgen.metrics", "svgen.testing"],
    ["svgen.distributed", "svgen.tracking"],
    ["svgen.train.checkpoint", "svgen.train.ema", "svgen.train.engine", "svgen.train.perf", "svgen.train.guards",
     "svgen.train.resume"],
    ["svgen.train.validation", "svgen.train.provenance"],
    ["svgen.train.loop"],
    ["launch"],
]


def _unit(module: str) -> tuple[int, str] | None:
    """(layer, unit) of a module: the longest LAYERS entry that is it or a package above it."""
    best = None
    for i, units in enumerate(LAYERS):
        for u in units:
            if (module == u or module.startswith(u + ".")) and (best is None or len(u) > len(best[1])):
                best = (i, u)
    return best


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layering_violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted([*(root / "svgen").rglob("*.py"), *(root / "launch").rglob("*.py")]):
        name = _module_name(path, root)
        if name in ("svgen", "svgen.train"):  # package markers: they must not import anything of svgen
            bad += [f"{path.relative_to(root)} imports {n}" for n in _imports(path) if n.startswith("svgen")]
            continue
        me = _unit(name)
        assert me is not None, f"{path.relative_to(root)} has no layer: add it to LAYERS"
        for name in _imports(path):
            other = _unit(name)
            if other is None or other[1] == me[1]:
                continue
            if other[0] >= me[0]:
                bad.append(f"{path.relative_to(root)} ({me[1]}, layer {me[0]}) imports {name} ({other[1]}, layer {other[0]})")
    return bad


def test_every_import_points_down():
    assert layering_violations() == []


def test_the_check_catches_a_back_arrow(tmp_path, monkeypatch):
    """Mutation check: models importing diffusion (the arrow issue 10 removed) is reported."""
    import shutil

    for sub in ("svgen", "launch"):
        shutil.copytree(ROOT / sub, tmp_path / sub, ignore=shutil.ignore_patterns("__pycache__"))
    joint = tmp_path / "svgen" / "models" / "joint.py"
    joint.write_text("from svgen.diffusion.schedule import Schedule\n" + joint.read_text())
    found = layering_violations(tmp_path)
    assert len(found) == 1 and "svgen/models/joint.py" in found[0] and "svgen.diffusion.schedule" in found[0]


@pytest.mark.parametrize("sub", ["models", "diffusion", "kernels", "media", "data", "system"])
def test_networks_and_diffusion_stay_free_of_distributed_code(sub):
    for path in (ROOT / "svgen" / sub).rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in HEAVY}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_svgen_never_imports_launch_or_data_prep():
    for path in (ROOT / "svgen").rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("launch", "data_prep")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_data_prep_imports_only_config_shard_schema_fileio_and_media_features():
    allowed = {"svgen.config", "svgen.shards", "svgen.fileio", "svgen.media.audio"}
    for path in (ROOT / "data_prep").rglob("*.py"):
        bad = {n for n in _imports(path) if n.startswith("svgen") and n not in allowed}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_product_never_imports_experiments():
    """experiments/ (the ablation) sits on top of the product: svgen, data_prep and launch never
    import it."""
    for sub in ("svgen", "data_prep", "launch"):
        for path in (ROOT / sub).rglob("*.py"):
            bad = {n for n in _imports(path) if n.split(".")[0] == "experiments"}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def _module_graph(package: Path, root: Path) -> dict[str, set[str]]:
    """Imports between the modules of one package (absolute and relative, at any depth of the
    file, deferred imports included: a cycle through a function-level import is still a cycle)."""
    modules = {_module_name(p, root): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        targets = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # imports for type checkers only never run
                continue
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([base] if base else []))
                targets.add(base)
                targets |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def import_cycles(package: Path, root: Path = ROOT) -> list[list[str]]:
    """Import cycles among the modules of ``package`` (each as the list of modules around it)."""
    graph = _module_graph(package, root)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return cycles


@pytest.mark.parametrize("package", ["svgen", "data_prep", "launch", "experiments"])
def test_no_import_cycle_inside_a_package(package):
    assert import_cycles(ROOT / package) == []


def test_the_cycle_check_catches_a_cycle(tmp_path):
    """Mutation check: the ablation's CLI and its stages importing each other (issue 20) is found."""
    import shutil

    shutil.copytree(ROOT / "experiments", tmp_path / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    stages = tmp_path / "experiments" / "ablation" / "stages.py"
    stages.write_text(stages.read_text() + "\n\ndef _late():\n    from experiments.ablation.__main__ import main\n")
    found = import_cycles(tmp_path / "experiments", tmp_path)
    assert found and any("experiments.ablation.__main__" in c and "experiments.ablation.stages" in c for c in found)
