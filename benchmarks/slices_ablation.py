"""A small CPU run of the tailored-curation ablation: MoCo v3 on curated vs uncurated slices vs scratch.

Not a speed benchmark: a reproducible, CPU-sized instance of the comparison the tailored-curation
paper (Computerized Medical Imaging and Graphics 123, 2025) makes, on synthetic data, so that the
code path is exercised end to end and the figures have a reference. One synthetic BraTS-layout
tumour cohort for the slice task and an unlabelled tumour pool of other subjects; notebook 01's slice
filter; MoCo v3 (``resnet18_2d``) pretrained twice on the pool with the same budget (steps x batch), on
its curated slices and on all its slices (the leakage guard refuses an init that saw a study subject); then the slice
task (tumour present per slice, :func:`kit.finetune.slice_task.slice_study`): linear probe and
fine-tune per init, label fractions in subjects, seeds, one fixed test set of subjects.

Usage:
    python benchmarks/slices_ablation.py                 # ~10 min on 2 CPU cores
    python benchmarks/slices_ablation.py --n 24 --pretrain-steps 300

Writes benchmarks/results/slices_ablation/{results.csv, summary.csv, run.json}.
"""
from __future__ import annotations

import argparse
import json
import os

# Spin-waiting OpenMP threads slow every step down on a shared machine (see bench_train.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from kit.data.cache import build_cache
from kit.data.cohorts import prepare_cohorts
from kit.data.curate import SliceFilter, curate_slices, retained_fraction
from kit.data.slices import SliceDataset
from kit.models import create_model
from kit.ssl import create_objective
from kit.finetune import FinetuneConfig
from kit.train.provenance import guard_leakage, record_seen_subjects
from kit.finetune.slice_task import slice_study
from kit.finetune.stats import paired_difference, plot_label_efficiency, plot_paired_differences, summarise
from kit.train import TrainConfig, train


def summarise_results(results: pd.DataFrame, out: Path) -> None:
    """summary.csv (mean, 95% CI clipped to [0, 1], n) and auc_differences.csv (paired, vs scratch and
    curated vs uncurated) from the ablation's results table."""
    if "n_train_subjects" in results and "n_train" not in results:
        results = results.assign(n_train=results["n_train_subjects"])  # labelled subjects, for the x-ticks
    summaries = [summarise(results, metric, by=("init", "task", "label_fraction")).assign(metric=metric)
                 for metric in ("auc", "accuracy")]
    differences = [paired_difference(results, "auc", treatment, "scratch").assign(treatment=treatment)
                   for treatment in dict.fromkeys(results.init) if treatment != "scratch"]
    differences.append(paired_difference(results, "auc", "moco_v3:curated", "moco_v3:uncurated")
                       .assign(treatment="moco_v3:curated vs uncurated"))
    summary_table = pd.concat(summaries, ignore_index=True)
    summary_table.to_csv(out / "summary.csv", index=False)
    difference_table = pd.concat(differences, ignore_index=True)
    difference_table.to_csv(out / "auc_differences.csv", index=False)
    print(summary_table.to_string(index=False))
    print(difference_table.to_string(index=False))
    # the figure: AUC per init vs label fraction (fine-tune, probe), and the paired differences at the fewest labels
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8), constrained_layout=True)
    for ax, task in zip(axes[:2], ("tumor_present:finetune", "tumor_present:probe")):
        part = summary_table[(summary_table.task == task) & (summary_table.metric == "auc")]
        plot_label_efficiency(part, title=f"{task.split(':')[1]}: slice-level AUC (3 seeds)", ax=ax)
    fewest = difference_table[(difference_table.label_fraction == difference_table.label_fraction.min())
                              & (difference_table.control == "scratch")].copy()
    fewest["treatment"] = fewest["task"].str.split(":").str[1] + " " + fewest["treatment"]
    plot_paired_differences(fewest.assign(label_fraction=0.0),
                            title=f"minus scratch at label fraction {difference_table.label_fraction.min():g}", ax=axes[2])
    fig.savefig(out / "ablation.png", dpi=100)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="tumour-cohort subjects")
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--width", type=float, default=0.25, help="resnet18_2d widen_factor")
    parser.add_argument("--pretrain-steps", type=int, default=120)
    parser.add_argument("--pool", type=int, default=16, help="unlabelled pool subjects MoCo v3 pretrains on")
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "slices_ablation")
    parser.add_argument("--summarise-only", action="store_true",
                        help="recompute summary.csv and auc_differences.csv from OUT/results.csv")
    args = parser.parse_args(argv)
    if args.summarise_only:
        summarise_results(pd.read_csv(args.out / "results.csv"), args.out)
        return {}
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model_cfg = {"widen_factor": args.width}
    params = SliceFilter(axis=2, entropy_threshold=3.0, position_window=(0.1, 0.9))
    timings = {}
    with tempfile.TemporaryDirectory(prefix="slices_ablation_") as tmp:
        tmp = Path(tmp)
        # MoCo v3 pretrains on an unlabelled pool of other subjects (IDs BraTS2021_10000...), never on the
        # slice study's labelled or test subjects (the guard below refuses otherwise)
        cohorts = {"tumor": {"layout": "brats2021", "manifest": "brats2021", "n": args.n},
                   "tumor_pool": {"kind": "tumor", "layout": "brats2021", "manifest": "brats2021", "n": args.pool,
                                  "first_index": 10000}}
        prepared = prepare_cohorts(cohorts, tmp, seed=0, resolution_mm=args.resolution)
        result, pool = prepared["tumor"], prepared["tumor_pool"]
        entries, modalities = result.subjects, list(result.manifest.modalities)
        table = curate_slices(entries, params)
        cache = build_cache(entries, modalities, tmp / "cache")
        pool_table = curate_slices(pool.subjects, params)
        pool_cache = build_cache(pool.subjects, modalities, tmp / "cache_pool")
        inits = {"scratch": "scratch"}
        pretrain = {}
        for name, curated in (("moco_v3:curated", True), ("moco_v3:uncurated", False)):
            slices = SliceDataset(pool_cache, pool_table, axis=params.axis, size=args.size, curated=curated)
            torch.manual_seed(0)
            objective = create_objective("moco_v3", create_model("resnet18_2d", len(modalities), **model_cfg),
                                         dim=64, mlp_dim=256, temperature=1.0, total_steps=args.pretrain_steps,
                                         lr_dim=slices.lr_dim)
            config = TrainConfig(steps=args.pretrain_steps, batch_size=args.batch_size, lr=1e-3, warmup_steps=10,
                                 weight_decay=0.1, progress=False, device="cpu", ckpt_every=args.pretrain_steps)
            start = time.perf_counter()
            summary = train(objective, slices, config, tmp / name.replace(":", "_"), modalities=modalities)
            timings[f"pretrain_{name}_s"] = round(time.perf_counter() - start, 1)
            records = json.loads((tmp / name.replace(":", "_") / "metrics.json").read_text())["records"]
            pretrain[name] = {"slices": len(slices), "loss_first": round(records[0]["loss"], 4),
                              "loss_last": round(records[-1]["loss"], 4)}
            print(f"{name}: {len(slices)} slices, loss {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f} "
                  f"({timings[f'pretrain_{name}_s']} s)", flush=True)
            inits[name] = summary["checkpoint"]
            record_seen_subjects(Path(summary["checkpoint"]).parent, name, [e["subject"] for e in pool.subjects],
                                 cohort="tumor_pool")
        guard_leakage(inits, [str(e["subject"]) for e in entries], "refuse", "slices_ablation")
        config = FinetuneConfig(task="classification", target="tumor_present", backbone="resnet18_2d", model=model_cfg,
                                steps=args.finetune_steps, batch_size=args.batch_size, lr=1e-3, warmup_steps=4,
                                device="cpu", class_weights="balanced")
        start = time.perf_counter()
        results = slice_study(cache, table, inits, config, fractions=args.fractions, seeds=args.seeds,
                              test_fraction=0.3, axis=params.axis, size=args.size)
        timings["slice_study_s"] = round(time.perf_counter() - start, 1)
    results = results.rename(columns={"fraction": "label_fraction"}).assign(task=lambda d: "tumor_present:" + d["mode"])
    args.out.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.out / "results.csv", index=False)
    summarise_results(results, args.out)
    run = {
        "what": "MoCo v3 (resnet18_2d) on curated vs uncurated slices vs scratch; tumour present per slice",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "slice_filter": {"axis": params.axis, "entropy_threshold": params.entropy_threshold,
                         "position_window": list(params.position_window), **retained_fraction(table)},
        "pretrain": pretrain, "timings_s": {**timings, "total": round(time.perf_counter() - started, 1)},
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "versions": {"torch": torch.__version__},
        "command": "python benchmarks/slices_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (args.out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(f"wrote {args.out}")
    return run


if __name__ == "__main__":
    main()
