"""Guard: the import direction of STYLE.md (convention 10), lowest layer first:

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
    ["svgen.generate", "svgen.metrics"],
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
