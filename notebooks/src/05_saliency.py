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
# # 05 · Saliency, measured
#
# The cross-contrast paper says the saliency of pretrained tumour classifiers is "mainly clustered
# around the tumours", but never measures it. Here it is measured, for the tumour-detection
# classifiers of notebook 04 (trained from scratch and from the stage 1+2 checkpoint), on test
# subjects that have a tumour:
#
# - **mass in lesion**: the share of positive saliency that falls inside the tumour mask (and
#   inside the mask dilated by a few mm);
# - **pointing game**: is the map's maximum inside the tumour?
# - **random baseline**: what a map with no information scores, i.e. the tumour's share of the
#   brain volume (and smooth random maps for the pointing game).
#
# Methods come from `monai.visualize` (Grad-CAM, Grad-CAM++, occlusion sensitivity, vanilla and
# smooth gradients) and captum (integrated gradients). Maps live on the classifier's input grid;
# the lesion mask is resampled onto that grid the same way the image is.

# %% tags=["parameters"]
profile = "smoke"
run_dir = None  # None: $KIT_RUN_DIR, else <checkout>/runs/<profile> (kit reproduce --out runs/<profile>)
data_root = None
device = "auto"
seed = 0
interactive = False
objective = None  # the objective notebooks 02-04 used; None: the profile's (swin_trio)

# %% [markdown] tags=["2d"]
# ## The 2D path: saliency of the slice classifiers
# A run pretrained on 2D slices (`moco_v3`) has slice classifiers instead (notebook 04: tumour
# present per curated slice, fine-tuned with all labels, first seed). Each test subject with a
# tumour contributes its curated slice with the largest tumour area; the maps are computed on the
# classifier's input grid (the slice resized and padded), the tumour mask is resized the same way,
# and the same metrics apply in 2D (areas instead of volumes). Only classifiers whose test AUC
# reaches the profile's `min_auc` are explained. `kit reproduce` leaves the 3D cells out of such a run.

# %% tags=["2d"]
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kit.data.cache import open_cache
from kit.explain import localisation_figures, random_baseline, summarise_localisation
from kit.explain.slices import explain_slices, slice_cases, slice_classifier_auc, slice_on_grid, slice_test_dataset
from kit.pipeline import find_run_dir, profile_config, show_smoke_banner, stage_dir, write_summary
from kit.finetune import load_finetuned
from kit.finetune.slice_run import SLICE_TASK, UNCURATED, is_slice_objective
from kit.finetune.study import init_name, kept_model_path
from kit.viz import plot_slice_heatmap
from kit.viz.results import plot_localisation_bars

run_dir = find_run_dir(run_dir, profile)
objective = objective or profile_config(profile)["stage1"]["objective"]
is_2d = is_slice_objective(objective)  # True for an objective trained on 2D slices (spatial_dims 2)
if is_2d:
    show_smoke_banner(profile)
    config = profile_config(profile)["saliency"]
    out = stage_dir(run_dir, "05_saliency")
    models_dir = Path(run_dir) / "04_finetune" / "models"
    cache = open_cache(Path(run_dir) / "04_finetune" / "cache_tumor")
    names = [init_name(i, objective) for i in config["inits"]]
    names += [f"{init_name('stage1+2', objective)} {UNCURATED}"]  # the ablation's init, when notebook 04 ran it
    classifiers, metas = {}, {}
    for init in names:
        if kept_model_path(models_dir, SLICE_TASK, init).exists():
            classifiers[init], metas[init] = load_finetuned(kept_model_path(models_dir, SLICE_TASK, init))
    test = slice_test_dataset(cache, Path(run_dir) / "01_curation" / "slices.csv", next(iter(metas.values())), cohort="tumor")
    min_auc = float(config.get("min_auc", 0.0))
    test_auc = {init: slice_classifier_auc(model, test)["auc"] for init, model in classifiers.items()}
    not_explained = {k: v for k, v in test_auc.items() if min_auc > 0 and not v >= min_auc}  # nan is not evidence
    for init, auc in not_explained.items():
        print(f"{init}: test AUC {auc:.3f} < {min_auc:.2f}: not explained (its maps would describe a model that "
              "does not yet tell tumour slices from the others)")
        del classifiers[init]
    cases = slice_cases(test, config["n_cases"]) if classifiers else []
    print(f"{len(test)} test slices of {test.index.subject.nunique()} subjects; test AUC "
          f"{', '.join(f'{k} {v:.3f}' for k, v in test_auc.items())}; explained: {list(classifiers) or 'none'}; "
          f"{len(cases)} cases")

# %% tags=["2d"]
if is_2d:
    methods = list(config["methods"])
    saliency, maps = explain_slices(classifiers, test, cases, methods, config.get("method_kwargs"), config["dilate_mm"])
    saliency.to_csv(out / "saliency.csv", index=False)
    baselines = []
    for row in cases:
        _, lesion, brain, _ = slice_on_grid(test, row)
        b = random_baseline(lesion, brain, n=config["random_n"], rng=seed)
        baselines.append({"row": row, **{k: v for k, v in b.items() if np.isscalar(v)}})
    baseline = pd.DataFrame(baselines)
    table = (summarise_localisation(saliency, by=["init", "method"], seed=seed) if len(saliency)
             else pd.DataFrame(columns=["init", "method"]))
    table.to_csv(out / "saliency_summary.csv", index=False)
    display(table.round(3))
    chance = float(baseline["share"].mean()) if "share" in baseline else float("nan")
    ax = plot_localisation_bars(table, chance)
    ax.figure.savefig(out / "figures" / "mass_in_lesion.png", dpi=100)
    plt.show()

# %% [markdown] tags=["2d"]
# ### Looking at the maps
# One test slice, one row per classifier, two methods: positive saliency over the first contrast
# (FLAIR), masked to the brain, with a colour bar; tumour outline in cyan; radiological convention.

# %% tags=["2d"]
from kit.tensors import to_numpy

if is_2d:
    plots = []
    if cases:
        show = [m for m in ("gradcam", "integrated_gradients", "occlusion") if m in methods][:2] or methods[:1]
        image, lesion, brain, spacing = slice_on_grid(test, cases[0])
        case = f"{test.index.subject.iloc[cases[0]]}:{int(test.index.slice.iloc[cases[0]])}"
        inits = [init for init in classifiers if all((init, m, case) in maps for m in show)]
        fig, grid = plt.subplots(len(inits), len(show), figsize=(4.4 * len(show), 3.8 * len(inits)),
                                 constrained_layout=True, squeeze=False)
        for ax, (init, method) in zip(grid.ravel(), [(i, m) for i in inits for m in show]):
            plot_slice_heatmap(to_numpy(image[0]), maps[(init, method, case)], axis=test.axis, brain_mask=brain,
                               outline=lesion, spacing=spacing, ax=ax, title=f"{init} {method}",
                               heat_label="saliency (a.u., 0 = none)")
        fig.suptitle(f"test slice {case}", fontsize=10)
        fig.savefig(out / "figures" / "saliency_maps.png", dpi=80)
        plots.append("figures/saliency_maps.png")
        plt.show()
    figures = {"task": "tumour present per slice (2D)",
               **localisation_figures(table, chance, min_auc, test_auc, not_explained, len(cases), methods)}
    write_summary(run_dir, "05_saliency",
                  f"slice saliency of the 2D tumour-present classifiers on {len(cases)} test slices (chance {chance:.2f})",
                  figures, ["figures/mass_in_lesion.png"] + plots)
    print("stage 05 done (2D path)")

# %% tags=["3d"]
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from kit.data.cache import open_cache
from kit.explain import localisation_figures, random_baseline, saliency_map, score_saliency, summarise_localisation
from kit.pipeline import find_run_dir, profile_config, show_smoke_banner, stage_dir, write_summary
from kit.tensors import to_numpy
from kit.finetune import classification_input, load_finetuned
from kit.finetune.study import init_name, kept_model_path
from kit.viz import plot_heatmap_over_anatomy
from kit.viz.results import plot_localisation_bars

run_dir = find_run_dir(run_dir, profile)  # the run kit reproduce made, also when opened in JupyterLab
show_smoke_banner(profile)
config = profile_config(profile)["saliency"]
out = stage_dir(run_dir, "05_saliency")
models_dir = Path(run_dir) / "04_finetune" / "models"
cache = open_cache(Path(run_dir) / "04_finetune" / "cache_tumor")
task = config["task"]
classifiers = {}
objective = objective or profile_config(profile)["stage1"]["objective"]
for init in [init_name(i, objective) for i in config["inits"]]:  # e.g. stage1+2 -> mim:stage1+2
    model, extra = load_finetuned(kept_model_path(models_dir, task, init))
    classifiers[init] = (model.eval(), extra)
_, extra = next(iter(classifiers.values()))
input_size = extra["input_size"]
test_subjects = set(extra.get("test_subjects", []))
by_subject = {str(e["subject"]): i for i, e in enumerate(cache.entries)}
labels = cache.labels()
cases = [by_subject[s] for s in sorted(test_subjects) if s in by_subject and np.any(np.asarray(labels[by_subject[s]]))]
cases = cases[: config["n_cases"]]
print(f"classifiers {list(classifiers)} for {task!r} ({extra['classes']}); {len(cases)} test cases with a tumour")

# %% [markdown] tags=["3d"]
# ## Which classifiers are worth explaining?
# A saliency map explains a model's decision; the map of a classifier that barely separates the
# classes says little about where a good one looks. Localisation is quantified only for
# classifiers whose test AUC reaches the profile's `min_auc` (0.85 outside smoke); the others are
# listed with their AUC and left out.

# %% tags=["3d"]
from kit.finetune.evaluate import evaluate_classification

min_auc = float(config.get("min_auc", 0.0))
test_idx = [by_subject[s] for s in sorted(test_subjects) if s in by_subject]
test_auc, not_explained = {}, {}
for init, (model, meta) in list(classifiers.items()):
    auc = evaluate_classification(model, cache, test_idx, task, meta["classes"], meta["input_size"]).summary["auc"]
    test_auc[init] = float(auc)
    if min_auc > 0 and not auc >= min_auc:  # a nan AUC (one class in the test set) is not evidence either
        not_explained[init] = float(auc)
        del classifiers[init]
for init, auc in not_explained.items():
    print(f"{init}: test AUC {auc:.3f} < {min_auc:.2f}: not explained (its maps would describe a model that "
          "does not yet tell tumours from healthy brains)")
print(f"explained: {list(classifiers) or 'none'} (test AUC {', '.join(f'{k} {v:.3f}' for k, v in test_auc.items())})")
if not classifiers:
    cases = []


# %% [markdown] tags=["3d"]
# ## Maps and their localisation
# The lesion mask and the brain mask are put on the classifier's grid with the same resize as
# the image (`classification_input`), then thresholded.

# %% tags=["3d"]
def on_classifier_grid(index):
    image = classification_input(np.asarray(cache.images()[index]), input_size)
    lesion = to_numpy(classification_input((np.asarray(labels[index]) > 0).astype(np.float32), input_size)[0]) > 0.5
    brain = to_numpy(image.abs().sum(0)) > 1e-3
    original = np.asarray(cache.entries[index]["shape"][1:], dtype=float)
    spacing = np.abs(np.diag(np.asarray(cache.entries[index]["affine"]))[:3]) * original.max() / max(input_size)
    return image, lesion, brain, tuple(spacing)

rows, maps = [], {}
for index in cases:
    image, lesion, brain, spacing = on_classifier_grid(index)
    subject = str(cache.entries[index]["subject"])
    for init, (model, meta) in classifiers.items():
        positive = len(meta["classes"]) == 2
        for method in config["methods"]:
            kwargs = config.get("method_kwargs", {}).get(method, {})
            sal = saliency_map(model, image[None], method, target=0 if positive else 1, **kwargs)
            scores = score_saliency(sal, lesion, brain_mask=brain, spacing_mm=spacing, dilate_mm=config["dilate_mm"])
            rows.append({"init": init, "method": method, "case": subject, **scores})
            maps[(init, method, subject)] = sal
saliency = pd.DataFrame(rows)
saliency.to_csv(out / "saliency.csv", index=False)
display(saliency.round(3))

# %% [markdown] tags=["3d"]
# ## What a map without information scores
# Smooth random maps inside the brain: their mean mass in the lesion is the lesion's share of the
# brain, and their pointing-game hit rate is the chance level.

# %% tags=["3d"]
baselines = []
for index in cases:
    _, lesion, brain, _ = on_classifier_grid(index)
    b = random_baseline(lesion, brain, n=config["random_n"], rng=seed)
    baselines.append({"case": str(cache.entries[index]["subject"]), **{k: v for k, v in b.items() if np.isscalar(v)}})
baseline = pd.DataFrame(baselines)
display(baseline.round(3))

# %% tags=["3d"]
table = (summarise_localisation(saliency, by=["init", "method"], seed=seed) if len(saliency)
         else pd.DataFrame(columns=["init", "method"]))
table.to_csv(out / "saliency_summary.csv", index=False)
display(table.round(3))

# %% tags=["3d"]
methods = list(config["methods"])
chance = float(baseline["share"].mean()) if "share" in baseline else float("nan")
# bars scaled to the data (values near 0.01 stay visible), CIs clipped to [0, 1], the random-map level dashed
ax = plot_localisation_bars(table[table.init.isin(list(classifiers))] if len(table) else table, chance)
fig = ax.figure
fig.savefig(out / "figures" / "mass_in_lesion.png", dpi=100)
plt.show()

# %% [markdown] tags=["3d"]
# ## Looking at the maps
# One test case, the same method for both initialisations: positive saliency over the FLAIR
# anatomy, masked to the brain, with a colour bar; tumour outline in cyan; radiological convention.

# %% tags=["3d"]
if cases:
    index = cases[0]
    image, lesion, brain, spacing = on_classifier_grid(index)
    subject = str(cache.entries[index]["subject"])
    show = [m for m in ("gradcam", "integrated_gradients", "occlusion") if m in methods][:2] or methods[:1]
    shown = [(method, init) for method in show for init in classifiers if (init, method, subject) in maps]
    fig, grid = plt.subplots(max(len(shown), 1), 3, figsize=(11, 3.2 * max(len(shown), 1)),
                             constrained_layout=True, squeeze=False)
    anatomy = to_numpy(image[0])  # FLAIR on the classifier's grid, under the map
    for row, (method, init) in enumerate(shown):
        # positive saliency over the anatomy, masked to the brain, tumour outline in cyan, colour bar per row
        plot_heatmap_over_anatomy(anatomy, maps[(init, method, subject)], brain_mask=brain, outline=lesion,
                                  spacing=spacing, axes=grid[row], title=f"{init} {method}",
                                  heat_label="saliency (a.u., 0 = none)")
    fig.savefig(out / "figures" / "saliency_maps.png", dpi=80)
    plt.show()

# %% tags=["3d"]
figures = localisation_figures(table, chance, min_auc, test_auc, not_explained, len(cases), methods)
write_summary(run_dir, "05_saliency",
              f"saliency localisation of {task} classifiers on {len(cases)} test tumours (chance {chance:.2f})",
              figures, ["figures/mass_in_lesion.png", "figures/saliency_maps.png"] if cases else ["figures/mass_in_lesion.png"])
print("stage 05 done")
