"""Curated 2D slices per second: from the preprocessing cache vs decoding the NIfTI files per slice.

A synthetic BraTS-layout tumour cohort (4 contrasts, .nii.gz) is generated and validated, the slice
filter of notebook 01 (``curate_slices``) picks the slices, and the same curated slices are then
served two ways in one process:

- kit: ``kit.data.slices.SliceDataset`` on the memory-mapped cache (``build_cache``, timed apart as a
  one-off cost): one strided read per slice, resized and padded to ``--size``;
- decode: what a slice loader without a cache does per sample, with the same output: ``nibabel.load``
  of each contrast's .nii.gz, the brain box and the z-score per contrast (both need the whole
  volume), the slice, then the same resize and pad. A lower bound is also timed: ``nibabel.load`` + reading only the
  slice of each contrast (``dataobj[..., s]``; gzip still decompresses up to it), no normalisation.

Rounds alternate the order of the two paths; the figure is the ratio of median slices/s.

Usage:
    python benchmarks/bench_slices.py                       # 4 subjects at 2 mm, 3 rounds
    python benchmarks/bench_slices.py --n 6 --resolution 1 --rounds 2

Writes benchmarks/results/slices.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel
import numpy as np
import torch

from kit.data.cache import build_cache
from kit.data.cohorts import prepare_cohorts
from kit.data.curate import SliceFilter, curate_slices, retained_fraction
from kit.data.slices import SliceDataset, fit_slice


def decode_slice(entry: dict, s: int, axis: int, size: int, margin: int = 2) -> torch.Tensor:
    """The same sample as SliceDataset, from the .nii.gz files: load every contrast, crop to the brain
    box (union of nonzero voxels, ``margin`` voxels around, as the cache), z-score each contrast over
    the brain, take the slice, resize and pad."""
    volumes = [np.asanyarray(nibabel.load(path).dataobj, dtype=np.float32) for path in entry["image"]]
    occupied = np.any(np.stack(volumes) != 0, axis=0)
    box = []
    for a in range(3):
        hits = np.flatnonzero(np.any(occupied, axis=tuple(b for b in range(3) if b != a)))
        box.append(slice(max(hits[0] - margin, 0), hits[-1] + 1 + margin))
    box[axis] = s
    channels = []
    for volume in volumes:
        brain = volume[volume != 0]
        plane = volume[tuple(box)]
        channels.append(np.where(plane != 0, (plane - brain.mean()) / max(float(brain.std()), 1e-8), 0.0))
    return fit_slice(np.stack(channels).astype(np.float32), size)


def decode_slice_only(entry: dict, s: int, axis: int) -> np.ndarray:
    """Lower bound of a per-slice decoder: open each contrast and read only slice ``s`` (no normalisation)."""
    index = [slice(None)] * 3
    index[axis] = s
    return np.stack([np.asarray(nibabel.load(p).dataobj[tuple(index)], dtype=np.float32) for p in entry["image"]])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="subjects (default 4)")
    parser.add_argument("--resolution", type=float, default=2.0, help="voxel side in mm (default 2)")
    parser.add_argument("--size", type=int, default=64, help="slice side in pixels (default 64)")
    parser.add_argument("--decode-slices", type=int, default=40, help="slices timed per round on the decode paths")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "slices.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    params = SliceFilter(axis=2, entropy_threshold=3.0, position_window=(0.1, 0.9))

    with tempfile.TemporaryDirectory(prefix="bench_slices_") as tmp:
        cohorts = {"tumor": {"layout": "brats2021", "manifest": "brats2021", "n": args.n}}
        result = prepare_cohorts(cohorts, tmp, seed=args.seed, resolution_mm=args.resolution)["tumor"]
        entries, modalities = result.subjects, list(result.manifest.modalities)
        table = curate_slices(entries, params)
        start = time.perf_counter()
        cache = build_cache(entries, modalities, Path(tmp) / "cache", with_labels=False)
        cache_build_s = time.perf_counter() - start
        dataset = SliceDataset(cache, table, axis=params.axis, size=args.size)
        by_subject = {e["subject"]: e for e in entries}
        rng = np.random.default_rng(args.seed)
        picks = rng.choice(len(dataset), size=min(args.decode_slices, len(dataset)), replace=False)
        rows = [(by_subject[dataset.index.subject[i]], int(dataset.index.slice[i])) for i in picks]
        # same output on both paths (z-scores may differ in the last bits: float32 sums in another order)
        for i, (entry, s) in zip(picks[:3], rows[:3]):
            np.testing.assert_allclose(dataset[int(i)].numpy(), decode_slice(entry, s, params.axis, args.size).numpy(), atol=2e-3)

        def time_kit() -> float:
            start = time.perf_counter()
            for i in range(len(dataset)):
                dataset[(i, 0)]
            return len(dataset) / (time.perf_counter() - start)

        def time_decode() -> float:
            start = time.perf_counter()
            for entry, s in rows:
                decode_slice(entry, s, params.axis, args.size)
            return len(rows) / (time.perf_counter() - start)

        def time_decode_only() -> float:
            start = time.perf_counter()
            for entry, s in rows:
                decode_slice_only(entry, s, params.axis)
            return len(rows) / (time.perf_counter() - start)

        rounds = []
        for r in range(args.rounds):
            order = [("kit", time_kit), ("decode", time_decode), ("decode_slice_only", time_decode_only)]
            if r % 2:
                order.reverse()
            rounds.append({name: fn() for name, fn in order})
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f} slices/s" for k, v in rounds[-1].items()), flush=True)
        shape = list(np.asanyarray(nibabel.load(entries[0]["image"][0]).dataobj).shape)
        megabytes = sum(p.stat().st_size for p in (Path(tmp) / "cache").glob("*.npy")) / 1e6

    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    summary = {
        "kit_slices_per_s": round(median["kit"], 1),
        "decode_slices_per_s": round(median["decode"], 2),
        "decode_slice_only_slices_per_s": round(median["decode_slice_only"], 2),
        "ratio_kit_to_decode": round(median["kit"] / median["decode"], 1),
        "ratio_kit_to_decode_slice_only": round(median["kit"] / median["decode_slice_only"], 1),
        "cache_build_s": round(cache_build_s, 2),
        "cache_mb": round(megabytes, 1),
        "curated_slices": len(dataset),
        "retained_fraction": retained_fraction(table)["both"],
    }
    print(f"kit {summary['kit_slices_per_s']} slices/s vs decode {summary['decode_slices_per_s']} slices/s: "
          f"{summary['ratio_kit_to_decode']}x (vs read-one-slice-only {summary['ratio_kit_to_decode_slice_only']}x); "
          f"cache built once in {summary['cache_build_s']} s", flush=True)
    report = {
        "benchmark": "curated slices/s: SliceDataset on the cache vs decoding the .nii.gz per slice (same output)",
        "setup": {"cohort": "synthetic tumour, brats2021 layout, 4 contrasts", "n_subjects": args.n,
                  "resolution_mm": args.resolution, "volume_shape": shape, "size": args.size,
                  "slice_filter": {"axis": params.axis, "entropy_threshold": params.entropy_threshold,
                                   "position_window": list(params.position_window)},
                  "decode_slices_per_round": len(rows), "rounds": args.rounds, "torch_threads": 1},
        "summary": summary,
        "rounds": [{k: round(v, 2) for k, v in r.items()} for r in rounds],
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "versions": {"numpy": np.__version__, "nibabel": nibabel.__version__, "torch": torch.__version__},
        "command": "python benchmarks/bench_slices.py " + " ".join(sys.argv[1:] if argv is None else argv),
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
