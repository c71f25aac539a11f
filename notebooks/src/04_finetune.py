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
#   every row of `results.csv` records it, so runs of several objectives can be put side by side.
# - **Splits**: a fixed, stratified, subject-level test set; per seed, nested label-fraction
#   subsets of the remaining subjects, identical for every initialisation, so differences are
#   paired.
#
# Every run appends a row to `results.csv` as it finishes; re-running the notebook after an
# interruption resumes the study.

# %% [parameters]
profile = "smoke"
run_dir = "runs/smoke"
data_root = None
device = "auto"
seed = 0
interactive = False
objective = None  # the objective notebooks 02-03 pretrained with; None: the profile's (swin_trio)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kit.data.cache import build_cache
from kit.data.cohorts import load_cohort
from kit.pipeline import profile_config, stage_dir, write_summary
from kit.train.evaluate import predict_volume
from kit.train.finetune import load_finetuned
from kit.train.regions import regions_to_labels
from kit.train.stats import paired_difference, plot_label_efficiency, summarise
from kit.train.study import init_name, kept_model_path, pretrained_inits, run_study, study_splits
from kit.viz import label_colors_for, plot_subjects

config = profile_config(profile)["finetune"]
out = stage_dir(run_dir, "04_finetune")
run = Path(run_dir)
objective = objective or profile_config(profile)["stage1"]["objective"]
inits = pretrained_inits(run, objective)  # scratch, stage1, stage1+2 (named with the objective)
final_init = init_name("stage1+2", objective)
seeds = [seed + s for s in config["seeds"]]
print(f"tasks: {[t['name'] for t in config['tasks']]}; fractions {config['fractions']}; seeds {seeds}; inits {list(inits)}")

# %% [markdown]
# ## Data: cached with labels
# The same cache as pretraining (brain-cropped, z-scored per channel, memory-mapped), now with the
# label maps, for every cohort a task uses.

# %%
caches, regions, label_values, metas = {}, {}, {}, {}
for cohort in sorted({t["cohort"] for t in config["tasks"]}):
    entries, meta = load_cohort(run / "01_curation" / "datalist.json", cohort)
    modalities = [meta["modality"][str(i)] for i in range(len(meta["modality"]))]
    caches[cohort] = build_cache(entries, modalities, out / f"cache_{cohort}", with_labels=True)
    regions[cohort] = meta.get("regions") or None
    label_values[cohort] = sorted(int(v) for v in meta.get("labels", {"0": "", "1": ""}))
    metas[cohort] = meta
    print(f"{cohort}: {len(entries)} subjects, channels {modalities}, regions {regions[cohort]}")

# %% [markdown]
# ## The study
# The 100 % models of the first seed are kept for the overlays below and for notebook 05.

# %%
models_dir = out / "models"
models_dir.mkdir(exist_ok=True)
top = max(config["fractions"])

def keep_model(init, task, fraction, seed_):
    return kept_model_path(models_dir, task, init) if fraction == top and seed_ == seeds[0] else None

results = run_study(
    caches, config["tasks"], inits, config["fractions"], seeds, config["config"], out / "results.csv",
    test_fraction=config["test_fraction"], regions=regions, label_values=label_values, device=device,
    save_models=keep_model,
)
display(results.head(20))

# %% [markdown]
# ## Results with 95 % intervals
# Means over seeds with Student-t intervals; with one seed (smoke) there is no interval.

# %%
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
summary_table.to_csv(out / "summary.csv", index=False)
display(summary_table.round(3))

# %% [markdown]
# ## Does pretraining help at the smallest label fraction?
# Paired difference (pretrained minus scratch) on the same training subjects and seed.

# %%
seg_task = next(t["name"] for t in config["tasks"] if t["task"] == "segmentation")
seg_rows = results[results.task == seg_task]
smallest = float(seg_rows.label_fraction.min())
diffs = pd.concat([paired_difference(seg_rows, "dice_mean", init) for init in inits
                   if init != "scratch" and init in set(seg_rows.init)], ignore_index=True)
display(diffs.round(4))
headline = diffs[(diffs.treatment == final_init) & (diffs.label_fraction == smallest)]
if len(headline):
    h = headline.iloc[0]
    interval = (f"95% CI {h.ci_low:+.3f} to {h.ci_high:+.3f}" if np.isfinite(h.ci_low) else "no interval")
    verdict = (f"{final_init} minus scratch, {seg_task} Dice at {smallest:.0%} labels: {h.mean_diff:+.3f} "
               f"({interval}, {int(h.n_pairs)} seed{'s' if h.n_pairs != 1 else ''})")
else:
    verdict = f"no paired {final_init} vs scratch result"
print(verdict)

# %% [markdown]
# ## Predictions on test cases
# Ground truth and the 100 % models' predictions (scratch vs stage 1+2), converted back from
# region channels to BraTS labels, through the tumour's centre.

# %%
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
        probs = predict_volume(model, images[i], config["config"]["crop"], overlap=config["config"]["sw_overlap"])
        pred = regions_to_labels(probs.numpy(), regions["tumor"])[0]
        rows.append({"image": flair, "label": pred, "point": point, "style": "contour",
                     "title": f"{cache.entries[i]['subject']} {init}"})
if rows:
    fig = plot_subjects(rows, spacing, colors=label_colors_for(metas["tumor"]["labels"]))
    fig.savefig(out / "figures" / "predictions.png", dpi=80)
    figures_written.append("figures/predictions.png")
    plt.show()

# %%
figures = {"runs": len(results), "seeds": len(seeds), "objective": objective, "verdict": verdict}
for spec, table in zip(config["tasks"], tables):
    for row in table.itertuples():
        if row.label_fraction in (smallest, top):
            figures[f"{spec['name']} {row.metric} {row.init} @{row.label_fraction:g}"] = (
                f"{row.mean:.3f}" + ("" if np.isnan(row.ci_low) else f" [{row.ci_low:.3f}, {row.ci_high:.3f}]"))
write_summary(run_dir, "04_finetune", verdict, figures, figures_written)
print("stage 04 done")
