"""Guard: the import direction of STYLE.md (convention 10)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"deepspeed", "mlflow", "ray"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_config_is_the_bottom():
    assert not any(n.startswith("svgen") for n in _imports(ROOT / "svgen" / "config.py"))


def test_networks_and_diffusion_stay_free_of_distributed_code():
    for sub in ("models", "diffusion", "kernels", "media", "data"):
        for path in (ROOT / "svgen" / sub).rglob("*.py"):
            bad = {n for n in _imports(path) if n.split(".")[0] in HEAVY}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
            assert not any(n.startswith("launch") for n in _imports(path))


def test_svgen_never_imports_launch_or_data_prep():
    for path in (ROOT / "svgen").rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("launch", "data_prep")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_data_prep_imports_only_config_and_shard_schema_from_svgen():
    allowed = {"svgen.config", "svgen.shards"}
    for path in (ROOT / "data_prep").rglob("*.py"):
        bad = {n for n in _imports(path) if n.startswith("svgen") and n not in allowed}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
