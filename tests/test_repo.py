"""Repository contracts: README commands == CI, notebooks output-free with the parameters contract."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONTRACT = {"profile", "run_dir", "data_root", "device", "seed"}


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv[^\n]*)\n```", text)


def test_readme_has_two_fresh_machine_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main, tests = commands
    assert "kit reproduce --profile smoke" in main and "pytest" in tests
    for cmd in commands:  # the pinned CPU torch goes in before anything that depends on torch
        assert cmd.index("torch==2.13.0") < cmd.index("pip install -q -e" if "-q -e" in cmd else "pip install -e")
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_pyproject_pins_cpu_torch():
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_contract(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert sum(len(c.get("outputs", [])) for c in code) == 0, "committed notebooks carry no outputs"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and params[0] is code[0], "first code cell is the one tagged 'parameters'"
    names = set(re.findall(r"^(\w+)\s*=", "".join(params[0]["source"]), flags=re.M))
    assert CONTRACT <= names


def _cells(notebook) -> list[tuple]:
    return [(c["cell_type"], "".join(c["source"]), c.get("metadata", {}).get("tags", [])) for c in notebook["cells"]]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_matches_its_source(path):
    """notebooks/NN.ipynb is paired with notebooks/src/NN.py (py:percent, jupytext.toml): same cells,
    same tags (the papermill 'parameters' cell), same kernel."""
    src = ROOT / "notebooks" / "src" / f"{path.stem}.py"
    assert src.exists(), f"{src} missing: notebooks are paired with notebooks/src"
    paired = jupytext.read(src, fmt="py:percent")
    committed = json.loads(path.read_text())
    fix = f"run jupytext --sync {src.relative_to(ROOT)} (after editing the .py)"
    assert _cells(paired) == _cells(committed), f"{path.name} differs from {src.name}: {fix}"
    assert paired.metadata.get("kernelspec") == committed["metadata"].get("kernelspec"), f"{path.name}: kernel differs; {fix}"


def test_sync_check_sees_a_changed_source(tmp_path):
    """The pairing check above fails when the .py and the .ipynb differ (here: one edited line)."""
    path = NOTEBOOKS[0]
    text = (ROOT / "notebooks" / "src" / f"{path.stem}.py").read_text()
    edited = tmp_path / "edited.py"
    edited.write_text(text.replace("seed = 0", "seed = 1", 1))
    assert _cells(jupytext.read(edited, fmt="py:percent")) != _cells(json.loads(path.read_text()))


def test_kit_help_does_not_import_torch():
    """`kit --help` stays instant: building every parser imports no torch (several seconds)."""
    code = ("import sys; from kit.cli import build_parser; p = build_parser(); "
            "p.format_help(); print('torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_project_files_cite_nothing_outside_the_repository():
    """Users have the repository only: code, docs and notebooks cite papers and public repositories."""
    pattern = re.compile(r"DESIGN\.md|REFERENCES\.md|\.\./shared")
    offenders = []
    for folder in ("kit", "notebooks", "tests", "benchmarks", "examples", "tools", "data_manifests"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".md", ".ipynb", ".yaml", ".sh", ".sbatch", ".json", ".toml"}:
                text = path.read_text(errors="ignore")
                if pattern.search(text) and path.name != "test_repo.py":
                    offenders.append(str(path.relative_to(ROOT)))
    for name in ("README.md", "pyproject.toml", "environment.yml"):
        if pattern.search((ROOT / name).read_text()):
            offenders.append(name)
    assert not offenders, offenders
