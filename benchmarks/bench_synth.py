"""Throughput of the synthetic-cohort generator (kit.data.synth).

Times ``synth_cohort('tumor', 'brats2021', ...)`` (4 contrasts + label, .nii.gz, default gzip level)
at 2 mm and 1 mm in one process, and compares it with the in-process baseline of only writing the
same arrays with ``write_subject``. The atlas load (nilearn import + resampling, once per process and
resolution) is timed separately and kept out of the throughput.

Usage:
    python benchmarks/bench_synth.py            # n=3 subjects at 1 mm, 2n at 2 mm
    python benchmarks/bench_synth.py --n 5 --out benchmarks/results/synth.json

Prints one line per resolution and writes the figures to benchmarks/results/synth.json. Wall times
include waiting for the CPU on a shared machine; ``cpu_s_per_subject`` (process CPU time of the
synth_cohort run) is the figure to compare across loaded machines.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import nibabel
import numpy as np
import scipy

from kit.data.synth import make_subject, synth_cohort, write_subject
from kit.data.synth_atlas import load_atlas

COHORT, LAYOUT = "tumor", "brats2021"


def bench_resolution(resolution_mm: float, n: int, seed: int, workdir: Path) -> dict:
    """Time atlas load, full synth_cohort, generation only and write only for ``n`` subjects."""
    start = time.perf_counter()
    load_atlas(resolution_mm)
    atlas_s = time.perf_counter() - start

    start, start_cpu = time.perf_counter(), time.process_time()
    synth_cohort(COHORT, LAYOUT, n=n, out=workdir / f"cohort_{resolution_mm:g}mm", seed=seed,
                 resolution_mm=resolution_mm)
    cohort_s = time.perf_counter() - start
    cohort_cpu_s = time.process_time() - start_cpu

    generate_s, write_s = 0.0, 0.0
    out = workdir / f"write_only_{resolution_mm:g}mm"
    for index in range(n):
        start = time.perf_counter()
        subject = make_subject(COHORT, index, seed=seed, resolution_mm=resolution_mm)
        generate_s += time.perf_counter() - start
        start = time.perf_counter()
        write_subject(subject, LAYOUT, out, index)
        write_s += time.perf_counter() - start
    megabytes = sum(p.stat().st_size for p in out.rglob("*.nii.gz")) / 1e6
    return {
        "resolution_mm": resolution_mm,
        "n_subjects": n,
        "atlas_load_s": round(atlas_s, 3),
        "synth_cohort_s": round(cohort_s, 3),
        "subjects_per_s": round(n / cohort_s, 4),
        "s_per_subject": round(cohort_s / n, 3),
        "cpu_s_per_subject": round(cohort_cpu_s / n, 3),
        "generate_only_s_per_subject": round(generate_s / n, 3),
        "write_only_s_per_subject": round(write_s / n, 3),
        "ratio_synth_to_write_only": round(cohort_s / write_s, 3),
        "written_mb_per_subject": round(megabytes / n, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="subjects at 1 mm (2 mm uses 2n); default 3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolutions", type=float, nargs="+", default=[2.0, 1.0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "synth.json")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        for resolution in args.resolutions:
            n = args.n if resolution <= 1.0 else 2 * args.n
            row = bench_resolution(resolution, n, args.seed, Path(tmp))
            results.append(row)
            print(f"{resolution:g} mm: {row['subjects_per_s']:.3f} subjects/s "
                  f"({row['s_per_subject']:.2f} s/subject wall, {row['cpu_s_per_subject']:.2f} s CPU; "
                  f"generate {row['generate_only_s_per_subject']:.2f} s "
                  f"+ write {row['write_only_s_per_subject']:.2f} s), "
                  f"synth/write-only = {row['ratio_synth_to_write_only']:.2f}, "
                  f"{row['written_mb_per_subject']:.1f} MB/subject, atlas load {row['atlas_load_s']:.1f} s",
                  flush=True)
    report = {
        "benchmark": "synth_cohort('tumor', 'brats2021') 4 contrasts + label, .nii.gz",
        "baseline": "write_subject of the same arrays (write only), in the same process",
        "results": results,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count(),
                    "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__, "nibabel": nibabel.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
