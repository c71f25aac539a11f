"""benchmarks/gpu_check.sh on a machine without a GPU: one clear line, and every command it would run parses."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
CUDA_JSONS = ("smoke_cuda.json", "train_cuda.json", "inference_cuda.json")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run for real")


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _results() -> dict:
    folder = ROOT / "benchmarks" / "results"
    return {name: (folder / name).stat().st_mtime_ns for name in CUDA_JSONS if (folder / name).exists()}


def test_without_a_gpu_it_stops_first_with_one_clear_line():
    before = _results()
    done = _run()
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("gpu_check: no CUDA GPU visible to torch") and "NVIDIA GPU" in lines[0]
    assert done.stdout == ""  # nothing ran before the check
    assert _results() == before  # and no result was written or overwritten


def test_every_planned_command_parses_up_to_its_cuda_check():
    done = _run("--dry-run")
    assert done.returncode == 0, done.stderr
    plan = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())
    assert list(plan) == ["SMOKE", "TRAIN_B2", "TRAIN_B8", "INFER"]
    commands = {name: shlex.split(cmd) for name, cmd in plan.items()}

    smoke = commands["SMOKE"]
    assert smoke[1:4] == ["-m", "kit.cli", "reproduce"]
    args = build_parser().parse_args(smoke[3:])  # the kit CLI accepts it
    assert (args.profile, args.device) == ("smoke", "cuda")

    paper = "--device cuda --amp bf16 --backbone swinunetr --feature-size 48 --crop 96 --steps 30 --warmup 5"
    for name, batch in (("TRAIN_B2", "2"), ("TRAIN_B8", "8")):
        assert paper in plan[name] and f"--batch-size {batch}" in plan[name]
    assert "--device cuda --amp bf16 --sw-batch-size 4" in plan["INFER"]
    # The benchmark scripts parse every option and stop at their own CUDA check (argparse exit 2).
    for name in ("TRAIN_B2", "INFER"):
        cmd = [sys.executable, *commands[name][1:]]
        ran = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert ran.returncode == 2 and "no CUDA device visible to torch" in ran.stderr, (name, ran.stderr)
        assert "unrecognized arguments" not in ran.stderr
