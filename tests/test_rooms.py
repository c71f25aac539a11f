"""The package's rooms: what may import what (read from the source, so a lazy import counts too)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[1] / "kit"


def kit_imports(path: Path) -> set[str]:
    """Every ``kit.*`` module imported anywhere in ``path`` (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kit"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kit"))
    return found


def modules(*patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in KIT.glob(pattern))


@pytest.mark.parametrize("path", modules("deploy/*.py", "devices.py", "models/*.py", "data/*.py"), ids=lambda p: str(p.relative_to(KIT)))
def test_inference_models_and_data_import_no_training(path):
    """kit.deploy (inference, bundles) depends on models and data only, and so do they."""
    bad = {m for m in kit_imports(path) if m.startswith(("kit.train", "kit.finetune", "kit.ssl", "kit.run", "kit.pipeline"))}
    assert not bad, f"{path.relative_to(KIT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("train/*.py"), ids=lambda p: str(p.relative_to(KIT)))
def test_the_loop_does_not_import_fine_tuning(path):
    """kit.train (loop, sampling, distributed, pretrain) knows nothing of kit.finetune, which runs on it."""
    bad = {m for m in kit_imports(path) if m.startswith("kit.finetune")}
    assert not bad, f"{path.relative_to(KIT)} imports {sorted(bad)}"


def test_one_optimizer_and_modules_under_600_lines():
    """Every optimizer step is the loop's (kit.train.loop); no module of kit/ is over 600 lines."""
    optimisers = [p.relative_to(KIT) for p in KIT.rglob("*.py") if "torch.optim." in p.read_text(encoding="utf-8")]
    assert optimisers == [Path("train/loop.py")]
    long = {str(p.relative_to(KIT)): n for p in KIT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, long


# ----------------------------------------------------------------------------- the house: rooms, no cycle

ROOMS = ("cli", "run", "deploy", "explain", "viz", "finetune", "train", "ssl", "models", "data")  # top to bottom
BOTTOM = ("profiles", "stages", "seeds", "tempfiles", "tensors", "devices")  # utilities: import no room
SHIMS = {"pipeline": "kit.run.pipeline", "runstate": "kit.run.state", "predict": "kit.deploy.predict",
         "bundle": "kit.deploy.bundle", "bundle_scripts": "kit.deploy.bundle_scripts"}  # old paths


def module_name(path: Path) -> str:
    parts = path.relative_to(KIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The kit modules ``path`` imports anywhere (``from kit.a import b`` counts ``kit.a.b`` when b is a module),
    each with the packages above it, which Python imports first."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "kit":
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "kit"]
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    known = {module_name(p) for p in KIT.rglob("*.py")}
    return found & known


def room(module: str) -> str:
    """A module's room: its subpackage (``kit.train.loop`` -> ``train``), or, at the top level, itself."""
    return module.split(".")[1] if module.count(".") else "kit"


def room_graph() -> dict[str, set[str]]:
    """Room -> rooms it imports (module-level and function-level imports both; the old-path shims left out)."""
    graph: dict[str, set[str]] = {}
    for path in KIT.rglob("*.py"):
        source = room(module_name(path))
        if source in SHIMS or source == "kit":
            continue
        graph.setdefault(source, set()).update(room(m) for m in imported_modules(path) if room(m) not in (source, "kit"))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_cycle_between_rooms():
    """Granularity: rooms. Each subpackage of kit/ (cli, run, deploy, finetune, train, ssl, models, data, ...) is
    one node and each top-level module (profiles, stages, tempfiles, ...) another; an edge is any import, at
    module level or inside a function. The graph is acyclic, and the rooms stack in the order of ROOMS."""
    graph = room_graph()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    for source, targets in graph.items():
        for target in targets:
            if source in ROOMS and target in ROOMS:
                assert ROOMS.index(target) > ROOMS.index(source), f"kit.{source} imports kit.{target}, a room above it"
            assert source not in BOTTOM or target in BOTTOM, f"kit/{source}.py (bottom) imports kit.{target}"


def test_the_cycle_check_sees_a_cycle():
    """find_cycle is not vacuous: the old arrow models -> the command line (FORMATS) plus cli -> models is one."""
    graph = {**room_graph(), "models": room_graph()["models"] | {"cli"}}
    assert find_cycle(graph) is not None


def test_nothing_but_the_command_line_imports_it():
    importers = sorted(str(p.relative_to(KIT)) for p in KIT.rglob("*.py")
                       if not p.is_relative_to(KIT / "cli") and any(m.startswith("kit.cli") for m in imported_modules(p)))
    assert importers == []


def test_importing_the_command_line_imports_no_torch():
    code = "import sys, kit.cli, kit.cli.run, kit.cli.constants; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=KIT.parent)
    assert out.stdout.split() == ["False"], out.stdout + out.stderr


def test_the_command_line_constants_are_the_owners():
    """kit.cli.constants reads FORMATS and OBJECTIVES from their owners' source; they equal the imported values."""
    from kit.cli import constants
    from kit.models.imports import FORMATS
    from kit.ssl import OBJECTIVES, list_objectives

    assert constants.FORMATS == FORMATS and constants.OBJECTIVES == OBJECTIVES
    assert sorted(OBJECTIVES) == list_objectives()
    with pytest.raises(LookupError, match="NOPE"):
        constants.owner_constant("models/imports.py", "NOPE")


@pytest.mark.parametrize("old, new", sorted(SHIMS.items()))
def test_old_import_paths_are_the_moved_modules(old, new):
    """``kit.pipeline`` and the other old paths are the moved modules themselves: same objects, monkeypatching included."""
    import importlib

    old_module = importlib.import_module(f"kit.{old}")
    new_module = importlib.import_module(new)
    assert old_module is new_module
    public = getattr(new_module, "__all__", [n for n in vars(new_module) if not n.startswith("_")])
    assert public and all(getattr(old_module, n) is getattr(new_module, n) for n in public)


def test_old_names_of_moved_functions():
    """Names that moved out of a module stay importable where callers found them."""
    from kit.data.splits import check_disjoint
    from kit.pipeline import PROFILES, STAGES, profile_config, stage_dir, write_json_atomic
    from kit.run import profiles as run_profiles
    from kit import profiles, seeds, stages
    from kit.train.pools import check_disjoint as pools_check_disjoint
    from kit.train.sampling import sample_seed

    assert pools_check_disjoint is check_disjoint and sample_seed is seeds.sample_seed
    assert (STAGES, stage_dir, write_json_atomic) == (stages.STAGES, stages.stage_dir, stages.write_json_atomic)
    assert PROFILES is profiles.PROFILES and profile_config is run_profiles.profile_config
