# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # 04 · Fine-tuning and the label-efficiency study
#
# The seeds' central claim: SSL pretraining, especially on healthy brains first, makes models
# better **with few labels**. This notebook tests it on the run's cohorts.
#
# - **Tasks**: tumour segmentation (BraTS regions TC / WT / ET as sigmoid channels, Dice + BCE loss,
#   sliding-window inference on whole volumes, Dice and HD95 per region), tumour detection
#   (classification on the encoder with a pooled head; accuracy, AUC, sensitivity, specificity),
#   optionally a linear probe (frozen encoder), and stroke lesion segmentation on the ATLAS-layout
#   cohort.
# - **Initialisations**: `scratch`, `stage1` (notebook 02) and `stage1+2` (notebook 03). Their names
#   carry the pretraining objective when it is not the default `swin_trio` (`mim:stage1+2`), and
#   every row of `results.csv` records it, so runs of several objectives can be put side by side;
#   plus any in `extra_inits` (e.g. published weights converted with `kit import-weights`).
# - **Splits**: a fixed, stratified, subject-level test set; a fixed validation set (disjoint from
#   test) for model selection and early stopping; per seed, nested subsets of the remaining
#   subjects (label counts such as 1, 2, 4, all), identical for every initialisation, so
#   differences are paired.
# - **Linear probes**: the frozen encoder of each initialisation, computed once, with a logistic
#   head per label count and seed: what pretraining put in the features, in seconds.
#
# Every run appends a row to `results.csv` (and its validation curve to `curves.csv`) as it
# finishes; re-running the notebook after an interruption resumes the study.

# %% tags=["parameters"]
profile = "smoke"
run_dir = None  # None: $KIT_RUN_DIR, else <checkout>/runs/<profile> (kit reproduce --out runs/<profile>)
data_root = None
device = "auto"
seed = 0
interactive = False
extra_inits = {}  # more initialisations {name: kit checkpoint}, e.g. published weights from `kit import-weights`
objective = None  # the objective notebooks 02-03 pretrained with; None: the profile's (swin_trio)

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kit.data.cache import build_cache
from kit.data.cohorts import load_cohort
from kit.pipeline import find_run_dir, profile_config, show_smoke_banner, stage_dir, write_summary
from kit.tensors import to_numpy
from kit.models.inference import predict_volume, predict_whole_volume, use_whole_volume
from kit.finetune import load_finetuned
from kit.finetune.probes import probe_summary, run_probes
from kit.data.regions import regions_to_labels
from kit.finetune.stats import (catch_up_point, comparison_table, paired_difference, plot_label_efficiency,
                                plot_paired_differences, summarise)
from kit.finetune.study import committed_inits, init_name, kept_model_path, pretrained_inits, run_study, study_splits
from kit.train.provenance import describe_leakage
from kit.viz import label_colors_for, plot_subjects

run_dir = find_run_dir(run_dir, profile)  # the run kit reproduce made, also when opened in JupyterLab
show_smoke_banner(profile)
config = profile_config(profile)["finetune"]
out = stage_dir(run_dir, "04_finetune")
run = Path(run_dir)
objective = objective or profile_config(profile)["stage1"]["objective"]
inits = pretrained_inits(run, objective)  # scratch, stage1, stage1+2 (named with the objective)
final_init = init_name("stage1+2", objective)
# The repository's checkpoints pretrained on unlabelled pools apart from every subject here ("pool", "mim:pool"...):
# 20,000 crops each, 10x one fine-tune (benchmarks/results/pretraining/README.md), beside the short live demo of 02-03.
inits.update(committed_inits(config.get("committed_inits", [])))
if init_name("pool", objective) in inits:  # the headline: this objective's pretraining on the pools, not the short demo
    final_init = init_name("pool", objective)
# Further inits from the profile ("extra_inits") or the parameter (`kit reproduce --init NAME=CKPT`).
inits.update({**config.get("extra_inits", {}), **extra_inits})
seeds = [seed + s for s in config["seeds"]]
print(f"tasks: {[t['name'] for t in config['tasks']]}; fractions {config['fractions']}; seeds {seeds}; inits {list(inits)}")

# %% [markdown] tags=["2d"]
# ## The 2D path: slices, for an objective trained on slices
# This run's objective (`moco_v3`: MoCo v3 on the slices that notebook 01's filter keeps, as in the
# tailored-curation paper, Computerized Medical Imaging and Graphics 123, 2025) pretrains a 2D ResNet,
# so its checkpoints are evaluated on the paper's task instead of the 3D ones (`kit reproduce` leaves
# the 3D cells out of such a run):
#
# - **Task**: tumour present vs absent per curated slice of the tumour cohort (positive: the slice
#   holds a labelled tumour voxel); AUC, accuracy, sensitivity, specificity on the test slices.
# - **Splits in subjects**: a fixed, stratified test set of subjects; per seed, nested subsets of
#   the remaining subjects (label counts such as 1 and all), identical for every initialisation, so
#   differences are paired; one subject's slices are never on both sides.
# - **Initialisations**: `scratch`; `moco_v3:stage1+2`, the curated pretraining of notebooks 02-03;
#   `moco_v3:stage1+2 uncurated`, the same two stages with the same steps and batch on *every* slice
#   of the same subjects (the paper's curation ablation; `benchmarks/slices_ablation.py` runs a
#   larger CPU instance of it). The paper's ImageNet-pretrained baseline is not included: its
#   weights would have to be downloaded, and the kit runs offline.
# - **Modes**: `finetune` (everything trained) and, outside smoke, `probe` (frozen encoder, linear head).

# %% tags=["2d"]
import json

from kit.finetune.slice_run import SLICE_TASK, is_slice_objective, run_slice_finetune, summarise_slice_study

is_2d = is_slice_objective(objective)  # True for an objective trained on 2D slices (spatial_dims 2)
if is_2d:
    slice_results = run_slice_finetune(profile, run, objective, seed=seed, device=device, extra_inits=extra_inits)
    slice_report = summarise_slice_study(slice_results, final_init)
    columns = ["init", "task", "label_fraction", "seed", "n_train", "n_test_subjects", "auc", "accuracy",
               "sensitivity", "specificity"]
    display(slice_results[[c for c in columns if c in slice_results]].round(3))
    leak_note = describe_leakage(json.loads((out / "leakage.json").read_text()))
    print(leak_note)

# %% [markdown] tags=["2d"]
# ### Label efficiency and the paired differences
# Means over seeds with Student-t 95 % intervals; then pretrained minus scratch (and curated minus
# uncurated) on the same training subjects and seed, with the interval, the minimal detectable
# difference (`mdd`: 80 % power) and the catch-up point.

# %% tags=["2d"]
if is_2d:
    figures_written = []
    for task_name, part in slice_report["summary"].groupby("task"):
        ax = plot_label_efficiency(part, title=f"{task_name}: test AUC per slice")
        path = out / "figures" / f"label_efficiency_{task_name.replace(':', '_')}.png"
        ax.figure.savefig(path, dpi=100)
        figures_written.append(f"figures/{path.name}")
        plt.show()
    # the curation paper's comparison at the fewest labels: each pretraining minus scratch, paired, 95 % CI
    diffs = slice_report["differences"]
    fewest = diffs[(diffs.control == "scratch") & (diffs.label_fraction == diffs.label_fraction.min())]
    if len(fewest):
        n_fewest = int(slice_results[slice_results.label_fraction == fewest.label_fraction.min()].n_train.min())
        panels = list(fewest.groupby("task", sort=False))
        fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 0.5 * fewest.treatment.nunique() + 1.8),
                                 constrained_layout=True, squeeze=False)
        for ax, (task_name, part) in zip(axes[0], panels):
            plot_paired_differences(part, title=f"{task_name.split(':')[-1]}, {n_fewest} labelled subject(s)", ax=ax)
        fig.savefig(out / "figures" / "slice_inits_vs_scratch.png", dpi=100)
        figures_written.append("figures/slice_inits_vs_scratch.png")
        plt.show()
    slice_report["summary"].to_csv(out / "summary.csv", index=False)
    slice_report["differences"].to_csv(out / "differences.csv", index=False)
    display(slice_report["summary"].round(3))
    display(slice_report["differences"].round(4))
    print(slice_report["verdict"])
    print(slice_report["catch_up"])
    figures = {"runs": len(slice_results), "seeds": int(slice_results.seed.nunique()), "objective": objective,
               "task": "tumour present per slice (2D)", "verdict": slice_report["verdict"],
               "catch_up": slice_report["catch_up"], "leakage": leak_note,
               "imagenet_init": "not run: offline (its weights would have to be downloaded)"}
    labelled = {f: int(n) for f, n in zip(slice_results.label_fraction, slice_results.n_train)}  # subjects
    for row in slice_report["summary"].itertuples():
        figures[f"{row.task} {row.metric} {row.init} @{labelled[row.label_fraction]} subj."] = (
            f"{row.mean:.3f}" + ("" if np.isnan(row.ci_low) else f" [{row.ci_low:.3f}, {row.ci_high:.3f}]"))
    for row in slice_report["differences"].itertuples():
        figures[f"{row.task} {row.metric} {row.treatment} - {row.control} @{labelled[row.label_fraction]} subj."] = (
            f"{row.mean_diff:+.3f}" + ("" if np.isnan(row.ci_low) else f" [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"))
    write_summary(run_dir, "04_finetune", slice_report["verdict"], figures, figures_written)
    print("stage 04 done (2D path)")

# %% [markdown] tags=["3d"]
# ## Data: cached with labels
# The same cache as pretraining (brain-cropped, z-scored per channel, memory-mapped), now with the
# label maps, for every cohort a task uses.

# %% tags=["3d"]
caches, regions, label_values, metas = {}, {}, {}, {}
for cohort in sorted({t["cohort"] for t in config["tasks"]}):
    entries, meta = load_cohort(run / "01_curation" / "datalist.json", cohort)
    modalities = [meta["modality"][str(i)] for i in range(len(meta["modality"]))]
    caches[cohort] = build_cache(entries, modalities, out / f"cache_{cohort}", with_labels=True)
    regions[cohort] = meta.get("regions") or None
    label_values[cohort] = sorted(int(v) for v in meta.get("labels", {"0": "", "1": ""}))
    metas[cohort] = meta
    print(f"{cohort}: {len(entries)} subjects, channels {modalities}, regions {regions[cohort]}")

# %% [markdown] tags=["3d"]
# ## The study
# The 100 % models of the first seed are kept for the overlays below and for notebook 05.

# %% tags=["3d"]
models_dir = out / "models"
models_dir.mkdir(exist_ok=True)
top = max(config["fractions"])

def keep_model(init, task, fraction, seed_):
    return kept_model_path(models_dir, task, init) if fraction == top and seed_ == seeds[0] else None

results = run_study(
    caches, config["tasks"], inits, config["fractions"], seeds, config["config"], out / "results.csv",
    test_fraction=config["test_fraction"], regions=regions, label_values=label_values, device=device,
    save_models=keep_model, val_size=config.get("val_size", 0), leakage=config.get("leakage", "refuse"),
    workers=config.get("workers", 1),
)
display(results.head(20))
leak_file = out / "leakage.json"
leak_note = describe_leakage(json.loads(leak_file.read_text()) if leak_file.exists() else {})
print(leak_note)

# %% [markdown] tags=["3d"]
# ## Learning curves
# Validation metric against step, per initialisation (mean over seeds), with all training labels;
# the dot marks the step each run kept (model selection). A curve that is still rising at its
# last step has not converged.

# %% tags=["3d"]
curves_path = out / "curves.csv"
if curves_path.exists():
    curves = pd.read_csv(curves_path)
    fig, axes = plt.subplots(1, len(config["tasks"]), figsize=(5 * len(config["tasks"]), 3.4), constrained_layout=True,
                             squeeze=False)
    for ax, spec in zip(axes[0], config["tasks"]):
        rows = curves[curves.task == spec["name"]]
        value = "val_dice_mean" if spec["task"] == "segmentation" else "val_auc"
        if rows.empty or value not in rows:
            ax.set_visible(False)
            continue
        top_rows = rows[rows.label_fraction == rows.label_fraction.max()]
        for init, group in top_rows.groupby("init"):
            mean = group.groupby("step")[value].mean()
            line = ax.plot(mean.index, mean.values, marker=".", label=init)[0]
            best = group[group.best == 1].groupby("seed").step.max()
            ax.scatter(best.values, [mean.get(s, np.nan) for s in best.values], color=line.get_color(), zorder=3)
        n_labelled = int(top_rows.n_train.median()) if "n_train" in top_rows else None
        ax.set(xlabel="step", ylabel=value, ylim=(0, 1),
               title=f"{spec['name']}: validation, {n_labelled} labelled, mean of {top_rows.seed.nunique()} seed(s)")
        ax.legend(fontsize=8)
    fig.savefig(out / "figures" / "learning_curves.png", dpi=100)
    plt.show()

# %% [markdown] tags=["3d"]
# ## Results with 95 % intervals
# Means over seeds with Student-t intervals; with one seed (smoke) there is no interval.

# %% tags=["3d"]
metric_of = {"segmentation": "dice_mean", "classification": "auc"}
tables, figures_written = [], []
for spec in config["tasks"]:
    metric = metric_of[spec["task"]]
    rows = results[results.task == spec["name"]]
    if rows.empty or metric not in rows or rows[metric].isna().all():
        metric = "accuracy" if spec["task"] == "classification" else metric
    summary = summarise(rows, metric)
    tables.append(summary)
    ax = plot_label_efficiency(summary, title=f"{spec['name']}: {metric}")
    path = out / "figures" / f"label_efficiency_{spec['name']}.png"
    ax.figure.savefig(path, dpi=100)
    figures_written.append(f"figures/{path.name}")
    plt.show()
summary_table = pd.concat(tables, ignore_index=True)
summary_table.to_csv(out / "finetune_summary.csv", index=False)
display(summary_table.round(3))

# %% [markdown] tags=["3d"]
# ## Linear probes: what the frozen features know
# One pass of each frozen encoder over the cohort; then a logistic regression per label count and
# seed, on the same splits as the fine-tunes. `scratch` is a random frozen encoder: the baseline
# that pretraining has to beat.

# %% tags=["3d"]
probes_cfg = config.get("probes")
probe_table = None
if probes_cfg:
    probe_tasks = []
    for spec in config["tasks"]:
        if spec["name"] in probes_cfg["tasks"]:
            counts = probes_cfg["counts"] if spec["task"] == "segmentation" else probes_cfg["cls_counts"]
            probe_tasks.append({**{k: v for k, v in spec.items() if k not in ("inits", "config", "fractions")},
                                "counts": counts})
    probe_results = run_probes(
        caches, probe_tasks, inits, [seed + s for s in probes_cfg["seeds"]], probes_cfg["counts"], config["config"],
        out / "probe_results.csv", test_fraction=config["test_fraction"], val_size=config.get("val_size", 0),
        regions=regions, label_values=label_values, per_value=probes_cfg.get("per_value", 200),
        pool=probes_cfg.get("pool", "avg"),
        leakage=config.get("leakage", "refuse"),
    )
    probe_table = probe_summary(probe_results)
    probe_table.to_csv(out / "probe_summary.csv", index=False)
    display(probe_table.round(3))
    fig, axes = plt.subplots(1, len(probe_tasks), figsize=(5.5 * len(probe_tasks), 3.6), constrained_layout=True,
                             squeeze=False)
    for ax, spec in zip(axes[0], probe_tasks):
        part = probe_table[probe_table.task == spec["name"]]
        if len(part):
            plot_label_efficiency(part, title=f"linear probe, {spec['name']}: {part.metric.iloc[0]}", ax=ax)
    fig.savefig(out / "figures" / "probes.png", dpi=100)
    figures_written.append("figures/probes.png")
    plt.show()

# %% [markdown] tags=["3d"]
# ## Does pretraining help at the smallest label count?
# Paired difference (pretrained minus scratch) on the same training subjects and seed, with its
# t-interval, the minimal detectable difference at this number of pairs (`mdd`: 80 % power,
# two-sided 5 %; a smaller true effect would usually go unseen), and the catch-up point: the
# fewest labels at which scratch's mean is inside the pretrained interval.

# %% tags=["3d"]
seg_task = next(t["name"] for t in config["tasks"] if t["task"] == "segmentation")
seg_rows = results[results.task == seg_task]
smallest = float(seg_rows.label_fraction.min())
diffs = pd.concat([paired_difference(seg_rows, "dice_mean", init) for init in inits
                   if init != "scratch" and init in set(seg_rows.init)], ignore_index=True)
display(diffs.round(4))
headline = diffs[(diffs.treatment == final_init) & (diffs.label_fraction == smallest)]
if len(headline):
    h = headline.iloc[0]
    interval = (f"95% CI {h.ci_low:+.3f} to {h.ci_high:+.3f}, detectable >= {h.mdd:.3f}" if np.isfinite(h.ci_low)
                else "no interval")
    n_small = int(seg_rows[seg_rows.label_fraction == smallest].n_train.median())
    verdict = (f"{final_init} minus scratch, {seg_task} Dice with {n_small} labelled subject(s): {h.mean_diff:+.3f} "
               f"({interval}, {int(h.n_pairs)} seed{'s' if h.n_pairs != 1 else ''})")
else:
    verdict = f"no paired {final_init} vs scratch result"
seg_summary = next(t for t, spec in zip(tables, config["tasks"]) if spec["name"] == seg_task)
catch = catch_up_point(seg_summary, final_init) if final_init in set(seg_summary.init) else None
with_interval = seg_summary[(seg_summary.init == final_init) & seg_summary.ci_low.notna()]
catch_note = (f"catch-up point: scratch within the {final_init} interval from {catch['n_train']} labelled subjects"
              if catch else "catch-up point: not reached within the label counts studied" if len(with_interval)
              else "catch-up point: not measured (one seed per label count: no interval)")
print(verdict)
print(catch_note)

# %% [markdown] tags=["3d"]
# ## Objectives compared: every init against scratch, linear probe and fine-tune
# The same paired differences for every initialisation the run has (its own objective and those
# notebook 03 compared), per label count: the probe on its seeds, the fine-tune on the tasks' seeds,
# segmentation (Dice) and classification (AUC) alike. `mdd` is what this number of pairs could have
# detected; intervals crossing zero are no evidence either way. For segmentation, `boot_ci_*` is the
# paired bootstrap over seeds and test subjects (`per_subject.csv`), which also counts the choice of
# test subjects as noise. Written to `comparison.csv`.

# %% tags=["3d"]
comparison_parts = []
if probe_table is not None:
    for task_name, part in probe_table.groupby("task", sort=False):
        comparison_parts.append(comparison_table(probe_results[probe_results.task == task_name],
                                                 part.metric.iloc[0], "linear probe"))
subjects_path = out / "per_subject.csv"
per_subject = pd.read_csv(subjects_path) if subjects_path.exists() else None
comparison_parts.append(comparison_table(seg_rows, "dice_mean", "fine-tune",
                                         per_subject=None if per_subject is None else per_subject[per_subject.task == seg_task]))
for spec in config["tasks"]:  # every classifier: AUC of each init minus scratch
    cls_rows = results[results.task == spec["name"]]
    if spec["task"] == "classification" and "auc" in cls_rows and cls_rows.auc.notna().any():
        readout = "trained head, frozen encoder" if spec.get("config", {}).get("freeze_encoder") else "fine-tune"
        comparison_parts.append(comparison_table(cls_rows, "auc", readout))
comparison = pd.concat([c for c in comparison_parts if len(c)], ignore_index=True) if any(
    len(c) for c in comparison_parts) else pd.DataFrame()
if len(comparison):
    comparison.to_csv(out / "comparison.csv", index=False)
    display(comparison.drop(columns=["control", "p_value", "sd_diff"]).round(3))
    fewest = comparison[comparison.groupby(["readout", "task"]).label_fraction.transform("min") == comparison.label_fraction]
    panels = list(fewest.groupby(["readout", "task"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 0.5 * fewest.treatment.nunique() + 1.8),
                             constrained_layout=True, squeeze=False)
    for ax, ((readout, task_name), part) in zip(axes[0], panels):
        plot_paired_differences(part, title=f"{readout}, {task_name}, {int(part.n_train.min())} labelled", ax=ax)
    fig.savefig(out / "figures" / "objectives_vs_scratch.png", dpi=100)
    figures_written.append("figures/objectives_vs_scratch.png")
    plt.show()

# %% [markdown] tags=["3d"]
# ## Predictions on test cases
# Ground truth and the 100 % models' predictions (scratch vs stage 1+2), converted back from
# region channels to BraTS labels, through the tumour's centre.

# %% tags=["3d"]
cache = caches["tumor"]
seg_spec = next(t for t in config["tasks"] if t["name"] == seg_task)
test_idx, _ = study_splits(cache, seg_spec, config["fractions"], seeds[:1], config["test_fraction"])
images, labels = cache.images(), cache.labels()
rows = []
models = {init: load_finetuned(kept_model_path(models_dir, seg_task, init))[0]
          for init in ("scratch", final_init) if kept_model_path(models_dir, seg_task, init).exists()}
spacing = tuple(abs(float(v)) for v in np.diag(np.asarray(cache.entries[0]["affine"]))[:3])
for i in test_idx[: config["n_overlays"]]:
    truth = np.asarray(labels[i][0])
    point = tuple(int(c) for c in np.argwhere(truth > 0).mean(axis=0).round()) if truth.any() else None
    flair = np.asarray(images[i][0])
    rows.append({"image": flair, "label": truth, "point": point, "style": "contour",
                 "title": f"{cache.entries[i]['subject']} truth"})
    for init, model in models.items():
        mode = config["config"].get("inference", "sliding")
        if mode == "whole" or (mode == "auto" and use_whole_volume(model, images[i].shape[1:], roi=config["config"]["crop"])):
            probs = predict_whole_volume(model, images[i])
        else:
            probs = predict_volume(model, images[i], config["config"]["crop"], overlap=config["config"]["sw_overlap"])
        pred = regions_to_labels(to_numpy(probs), regions["tumor"])[0]
        pred[~(np.asarray(images[i]) != 0).any(axis=0)] = 0  # lesions lie in the brain: nothing outside it
        rows.append({"image": flair, "label": pred, "point": point, "style": "contour",
                     "title": f"{cache.entries[i]['subject']} {init}"})
if rows:
    fig = plot_subjects(rows, spacing, colors=label_colors_for(metas["tumor"]["labels"]))
    fig.savefig(out / "figures" / "predictions.png", dpi=80)
    figures_written.append("figures/predictions.png")
    plt.show()

# %% tags=["3d"]
figures = {"runs": len(results), "seeds": [int(s) for s in sorted(set(results.seed))], "objective": objective, "verdict": verdict, "catch_up": catch_note, "leakage": leak_note}
if curves_path.exists():
    figures_written.append("figures/learning_curves.png")
for row in comparison.itertuples() if len(comparison) else []:
    if row.label_fraction == comparison[(comparison.readout == row.readout) & (comparison.task == row.task)].label_fraction.min():
        figures[f"{row.readout} {row.task} {row.metric} {row.treatment} - scratch @{int(row.n_train)} labelled"] = (
            f"{row.mean_diff:+.3f}" + ("" if np.isnan(row.ci_low) else f" [{row.ci_low:+.3f}, {row.ci_high:+.3f}]")
            + f" (n={int(row.n_pairs)})")
if probe_table is not None:
    for row in probe_table.itertuples():
        figures[f"probe {row.task} {row.metric} {row.init} @{row.label_fraction:.3g}"] = (
            f"{row.mean:.3f}" + ("" if np.isnan(row.ci_low) else f" [{row.ci_low:.3f}, {row.ci_high:.3f}]"))
for spec, table in zip(config["tasks"], tables):
    for row in table.itertuples():
        if row.label_fraction in (smallest, top):
            figures[f"{spec['name']} {row.metric} {row.init} @{row.label_fraction:g}"] = (
                f"{row.mean:.3f}" + ("" if np.isnan(row.ci_low) else f" [{row.ci_low:.3f}, {row.ci_high:.3f}]"))
# the objectives x label counts table of the report: paired differences against scratch
columns = ["readout", "task", "treatment", "n_train", "metric", "treatment_mean", "mean_diff", "ci_low", "ci_high",
           "n_pairs", "mdd"]
tables = {"Every init against scratch (paired differences, 95% CI; comparison.csv)":
          comparison[columns].to_dict("records")} if len(comparison) else None
write_summary(run_dir, "04_finetune", verdict, figures, figures_written, tables=tables)
print("stage 04 done")
