"""Fine-tune throughput of the study's worker processes against one process using every core.

``run_study(..., workers=W)`` runs W fine-tunes at once, each in its own process with
``cpu_count // W`` threads. This script measures what that buys: the study's fine-tuning step
(``segresnet_small``, 8 filters, 4 channels, a batch of 4 crops of 32^3, the kit's Dice + BCE loss,
AdamW), timed for ``--steps`` steps after 5 warm-up steps,

- baseline: one process with all ``cpu_count`` threads, alone;
- workers: W processes at once, ``cpu_count // W`` threads each, started together.

Ratio = (W x steps / slowest worker's time) / (steps / baseline time): how many more steps per second
the study gets. Both run from this script, one after the other, on the same machine state (the JSON keeps
the load average).

    python benchmarks/bench_study_workers.py --steps 30 --workers 2

Writes benchmarks/results/study_workers_cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1])); torch.manual_seed(0)
from kit.models import create_model
from kit.finetune.task import DiceBCELoss
net = create_model("segresnet_small", in_channels=4, out_channels=3, init_filters=8)
opt = torch.optim.AdamW(net.parameters(), 1e-3)
loss_fn = DiceBCELoss()
x = torch.randn(4, 4, 32, 32, 32); y = (torch.rand(4, 3, 32, 32, 32) > 0.9).float()
steps = int(sys.argv[2])
for i in range(steps + 5):
    if i == 5:
        start = time.perf_counter()
    loss = loss_fn(net(x), y); opt.zero_grad(); loss.backward(); opt.step()
print(time.perf_counter() - start)
"""


def _run(threads: int, steps: int, copies: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(threads), str(steps)], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(copies)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "study_workers_cpu.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    base = _run(cores, args.steps, 1)[0]
    parallel = _run(max(1, cores // args.workers), args.steps, args.workers)
    ratio = (args.workers * args.steps / max(parallel)) / (args.steps / base)
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "cpu_count": cores,
              "machine": platform.platform(), "load_before": load_before, "load_after": os.getloadavg(),
              "steps": args.steps, "workers": args.workers, "baseline_s_per_step": round(base / args.steps, 4),
              "worker_s_per_step": [round(t / args.steps, 4) for t in parallel], "throughput_ratio": round(ratio, 3)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"baseline {result['baseline_s_per_step']} s/step ({cores} threads); {args.workers} workers "
          f"{result['worker_s_per_step']} s/step each; throughput ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
