"""The package's rooms: what may import what (read from the source, so a lazy import counts too)."""

from __future__ import annotations

import ast
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


@pytest.mark.parametrize("path", modules("predict.py", "devices.py", "models/*.py", "data/*.py"), ids=lambda p: str(p.relative_to(KIT)))
def test_inference_models_and_data_import_no_training(path):
    """kit.predict (inference) depends on models and data only, and so do they."""
    bad = {m for m in kit_imports(path) if m.startswith(("kit.train", "kit.finetune", "kit.ssl", "kit.pipeline"))}
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
