"""Wall time, peak memory and disk per stage of a `kit reproduce` profile, for the README's teacher table.

Runs each stage as its own `kit reproduce --from S --to S` process into one run folder and records,
per stage: wall seconds, the peak resident memory of the largest process in the stage's process tree
(the notebook kernel, from ``wait4``'s rusage), and the disk the stage folder (and the synthetic data,
for stage 01) takes. Writes ``benchmarks/results/profile_<profile>_<device>.json``.

    python benchmarks/profile_resources.py --profile smoke --out /tmp/prof_smoke

Absolute times depend on the machine and what else runs on it: the JSON stores the CPU count and
the load average before and after.
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
sys.path.insert(0, str(ROOT))

from kit.pipeline import STAGES  # noqa: E402


def _du_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0
    return round(total / 2**20, 1)


def run_stage(stage: str, profile: str, out: Path, device: str) -> dict:
    """Run one stage in a child process; returns wall_s, peak_rss_mb, rc."""
    cmd = [sys.executable, "-m", "kit.cli", "reproduce", "--profile", profile, "--out", str(out),
           "--from", stage, "--to", stage, "--device", device, "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss (KiB on Linux) of the child counts its waited-for descendants: the largest process
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--out", type=Path, required=True, help="a fresh run folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out}: not empty; give a fresh folder so every stage really runs")
    load_before = os.getloadavg()
    stages = {}
    for stage in STAGES:
        stages[stage] = run_stage(stage, args.profile, args.out, args.device)
        stages[stage]["disk_mb"] = _du_mb(args.out / stage)
        print(stage, stages[stage], flush=True)
        if stages[stage]["rc"] != 0:
            break
    record = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
        "profile": args.profile, "device": args.device, "stages": stages,
        "data_disk_mb": _du_mb(args.out / "data"), "total_disk_mb": _du_mb(args.out),
        "total_wall_s": round(sum(s["wall_s"] for s in stages.values()), 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
    }
    out = args.results or ROOT / "benchmarks" / "results" / f"profile_{args.profile}_{args.device}.json"
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")
    return 0 if all(s["rc"] == 0 for s in stages.values()) and len(stages) == len(STAGES) else 1


if __name__ == "__main__":
    sys.exit(main())
