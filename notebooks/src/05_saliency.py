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

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from kit.data.cache import open_cache
from kit.explain import random_baseline, saliency_map, score_saliency, summarise_localisation
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

# %% [markdown]
# ## Which classifiers are worth explaining?
# A saliency map explains a model's decision; the map of a classifier that barely separates the
# classes says little about where a good one looks. Localisation is quantified only for
# classifiers whose test AUC reaches the profile's `min_auc` (0.85 outside smoke); the others are
# listed with their AUC and left out.

# %%
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


# %% [markdown]
# ## Maps and their localisation
# The lesion mask and the brain mask are put on the classifier's grid with the same resize as
# the image (`classification_input`), then thresholded.

# %%
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

# %% [markdown]
# ## What a map without information scores
# Smooth random maps inside the brain: their mean mass in the lesion is the lesion's share of the
# brain, and their pointing-game hit rate is the chance level.

# %%
baselines = []
for index in cases:
    _, lesion, brain, _ = on_classifier_grid(index)
    b = random_baseline(lesion, brain, n=config["random_n"], rng=seed)
    baselines.append({"case": str(cache.entries[index]["subject"]), **{k: v for k, v in b.items() if np.isscalar(v)}})
baseline = pd.DataFrame(baselines)
display(baseline.round(3))

# %%
table = (summarise_localisation(saliency, by=["init", "method"], seed=seed) if len(saliency)
         else pd.DataFrame(columns=["init", "method"]))
table.to_csv(out / "saliency_summary.csv", index=False)
display(table.round(3))

# %%
methods = list(config["methods"])
chance = float(baseline["share"].mean()) if "share" in baseline else float("nan")
# bars scaled to the data (values near 0.01 stay visible), CIs clipped to [0, 1], the random-map level dashed
ax = plot_localisation_bars(table[table.init.isin(list(classifiers))] if len(table) else table, chance)
fig = ax.figure
fig.savefig(out / "figures" / "mass_in_lesion.png", dpi=100)
plt.show()

# %% [markdown]
# ## Looking at the maps
# One test case, the same method for both initialisations: positive saliency over the FLAIR
# anatomy, masked to the brain, with a colour bar; tumour outline in cyan; radiological convention.

# %%
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

# %%
figures = {"cases": len(cases), "methods": ", ".join(methods), "random_share": round(chance, 3),
           "min_auc": min_auc, **{f"{init} test AUC": round(auc, 3) for init, auc in test_auc.items()},
           "not explained (AUC below min_auc)": ", ".join(not_explained) or "none"}
for r in table.itertuples():
    figures[f"{r.init} {r.method} mass_in_lesion"] = (
        f"{r.mass_in_lesion_mean:.3f} [{r.mass_in_lesion_ci_low:.3f}, {r.mass_in_lesion_ci_high:.3f}]")
    figures[f"{r.init} {r.method} pointing_hit"] = f"{r.pointing_hit_mean:.2f}"
write_summary(run_dir, "05_saliency",
              f"saliency localisation of {task} classifiers on {len(cases)} test tumours (chance {chance:.2f})",
              figures, ["figures/mass_in_lesion.png", "figures/saliency_maps.png"] if cases else ["figures/mass_in_lesion.png"])
print("stage 05 done")
