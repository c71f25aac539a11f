"""kit pretrain: one stage from a run's datalist; 2 torchrun "nodes" (gloo, localhost rendezvous) = 1 process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kit.cli import main
from kit.data.cohorts import combined_datalist, prepare_cohorts
from kit.models import create_model, load_checkpoint
from kit.pipeline import write_json_atomic
from kit.ssl import create_objective

ROOT = Path(__file__).resolve().parents[1]
STEPS, LR = 3, 1e-4
OVERRIDES = [f"steps={STEPS}", f"lr={LR}", "crop=16", "warmup_steps=1", "ckpt_every=2",
             'objective_cfg={"mix_prob": 0.0}']  # mix_prob 0: no pasting across the (rank-local) batch


@pytest.fixture(scope="module")
def curated_run(tmp_path_factory):
    """A run directory after notebook 01: three synthetic healthy subjects (UK Biobank layout, 4 mm)."""
    run = tmp_path_factory.mktemp("run")
    results = prepare_cohorts({"healthy": {"layout": "ukb", "manifest": "ukb", "n": 3}}, run, resolution_mm=4.0,
                              progress=False)
    write_json_atomic(run / "01_curation" / "datalist.json", combined_datalist(results))
    return run


def copy_run(curated: Path, to: Path) -> Path:
    (to / "01_curation").mkdir(parents=True)
    shutil.copy(curated / "01_curation" / "datalist.json", to / "01_curation" / "datalist.json")
    return to


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def kit_pretrain_args(run: Path, batch_size: int) -> list[str]:
    args = ["pretrain", "--profile", "smoke", "--stage", "1", "--out", str(run), "--device", "cpu", "--quiet"]
    for item in OVERRIDES + [f"batch_size={batch_size}"]:
        args += ["--set", item]
    return args


def full_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {**{"model." + k: v for k, v in checkpoint["state_dict"].items()}, **checkpoint["extra"]["ssl_state"]}


def test_two_nodes_match_one_process_with_the_same_global_batch(curated_run, tmp_path):
    ddp_run, single_run = copy_run(curated_run, tmp_path / "ddp"), copy_run(curated_run, tmp_path / "single")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    port = free_port()
    nodes = []
    for node_rank in (0, 1):  # two torchrun agents, as on two machines, meeting at a c10d rendezvous
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node_rank),
                   "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
                   "--rdzv-id", "kit-test", "-m", "kit.cli"] + kit_pretrain_args(ddp_run, batch_size=1)
        nodes.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n----\n".join(o[-3000:] for o in outputs)

    single = subprocess.run([sys.executable, "-m", "kit.cli"] + kit_pretrain_args(single_run, batch_size=2),
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    assert json.loads(single.stdout.strip().splitlines()[-1])["world_size"] == 1

    ddp = load_checkpoint(ddp_run / "02_stage1" / "checkpoint.pt")
    one = load_checkpoint(single_run / "02_stage1" / "checkpoint.pt")
    assert ddp["extra"]["world_size"] == 2 and one["extra"]["world_size"] == 1
    assert ddp["extra"]["step"] == one["extra"]["step"] == STEPS
    assert ddp["extra"]["modalities"] == one["extra"]["modalities"] == ["t1", "flair"]

    torch.manual_seed(0)  # the seeded initialisation of prepare_pretraining (seed 0)
    initial = create_objective("swin_trio", create_model("segresnet_small", 2, 3, init_filters=8), mix_prob=0.0).state_dict()
    ddp_state, one_state = full_state(ddp), full_state(one)
    assert ddp_state.keys() == one_state.keys() == initial.keys()
    moved = max((one_state[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 5e-5  # training changed the weights, so the comparison below means something
    worst = max((ddp_state[k] - one_state[k]).abs().max().item() for k in initial)
    assert worst < 1e-5 and worst < 0.05 * moved, f"2 nodes and 1 process differ by up to {worst} (updates up to {moved})"

    ddp_log = [json.loads(line) for line in (ddp_run / "02_stage1" / "metrics.jsonl").read_text().splitlines()]
    one_log = [json.loads(line) for line in (single_run / "02_stage1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ddp_log] == [r["step"] for r in one_log] == list(range(1, STEPS + 1))
    for a, b in zip(ddp_log, one_log):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, abs(b["loss"])), (a, b)


def test_bad_requests_fail_with_one_line(curated_run, tmp_path, capsys):
    run = copy_run(curated_run, tmp_path / "run")
    assert main(["pretrain", "--profile", "smoke", "--stage", "2", "--out", str(run), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "02_stage1/checkpoint.pt" in err and "run stage 1 first" in err
    assert main(["pretrain", "--profile", "smoke", "--stage", "1", "--out", str(run), "--set", "stepz=3"]) == 1
    assert "unknown key 'stepz'; did you mean 'steps'?" in capsys.readouterr().err
    assert main(["pretrain", "--profile", "smoke", "--stage", "1", "--out", str(run), "--objective", "nope"]) == 1
    assert "unknown SSL objective 'nope'" in capsys.readouterr().err
    assert main(["pretrain", "--profile", "smoke", "--stage", "1", "--out", str(tmp_path / "empty")]) == 1
    assert "datalist not found" in capsys.readouterr().err


SRUN_SHIM = """#!/bin/bash
# srun stand-in: one copy of the command per "node", all on this machine
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" & pids+=($!); done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done; exit $rc
"""


def test_the_shipped_sbatch_script_trains_on_two_nodes(curated_run, tmp_path):
    """examples/slurm/pretrain.sbatch as SLURM would run it on 2 nodes (srun/scontrol stand-ins, gloo on CPU)."""
    run = copy_run(curated_run, tmp_path / "run")
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text(SRUN_SHIM)
    (shims / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "GPUS_PER_NODE": "1",
           "HEAD_PORT": str(free_port()), "DEVICE": "cpu", "PROFILE": "smoke", "STAGE": "1", "RUN": str(run),
           "KIT_ARGS": "--set steps=1 --set crop=16 --set batch_size=1 --set warmup_steps=1"}
    done = subprocess.run(["bash", str(ROOT / "examples" / "slurm" / "pretrain.sbatch")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checkpoint = load_checkpoint(run / "02_stage1" / "checkpoint.pt")
    assert checkpoint["extra"]["world_size"] == 2 and checkpoint["extra"]["step"] == 1
