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
# # 01 · Curation: cohorts, validation, quality control and slice filtering
#
# Every later stage stands on the data this notebook prepares. It
#
# 1. **generates** (or, with `data_root`, finds) three cohorts in the real datasets' file layouts:
#    healthy brains in the UK Biobank layout (stage 1 pretraining, T1 + FLAIR), brain tumours in the
#    BraTS 2021 layout (stage 2 pretraining and fine-tuning, FLAIR/T1ce/T1/T2 + labels) and chronic
#    stroke in the ATLAS v2.0 BIDS layout (T1w + lesion mask);
# 2. **validates** each against its manifest in `data_manifests/` (missing or truncated files,
#    NaN voxels, geometry mismatches, label values, paths escaping the root) and writes one
#    MONAI decathlon-style `datalist.json`;
# 3. shows a **volume QC** table and orthogonal views of subjects with lesion overlays;
# 4. applies the **slice filter** of the tailored-curation paper (slice image entropy threshold +
#    slice position window) and reports the retained fraction.
#
# The synthetic subjects come from the MNI152 anatomy shipped with nilearn, each with its own
# deformation, contrast-specific tissue intensities, bias field and noise. Nothing is downloaded.

# %% tags=["parameters"]
profile = "smoke"        # smoke | workshop | full
run_dir = None  # None: $KIT_RUN_DIR, else <checkout>/runs/<profile> (kit reproduce --out runs/<profile>)
data_root = None         # None: synthetic cohorts; else a folder with ukb/, brats2021/, atlas2/
device = "auto"          # unused here; part of the notebook contract
seed = 0
interactive = False      # True in JupyterLab: widget explorer (needs a live kernel)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kit.data.cohorts import combined_datalist, prepare_cohorts
from kit.data.curate import SliceFilter, curate_slices, retained_fraction, volume_qc
from kit.data.orientation import load_ras
from kit.pipeline import find_run_dir, profile_config, show_smoke_banner, stage_dir, write_json_atomic, write_summary
from kit.viz import label_colors_for, plot_entropy, plot_kept_dropped, plot_retained_fraction, plot_subjects
from kit.viz.results import plot_qc_volumes

run_dir = find_run_dir(run_dir, profile)  # the run kit reproduce made, also when opened in JupyterLab
config = profile_config(profile)
out = stage_dir(run_dir, "01_curation")
figures = out / "figures"
print(f"profile {profile!r}: {config['description']}; writing to {out}")
show_smoke_banner(profile)

# %% [markdown]
# ## 1 · Cohorts and validation
# Synthetic cohorts are generated once per run directory (re-running the notebook reuses them).
# Each is validated with the same code a real dataset goes through; a problem leaves that subject
# out of the datalist and is listed below with the file and the reason.

# %%
results = prepare_cohorts(
    config["cohorts"], run_dir, data_root=data_root, seed=seed,
    resolution_mm=config["resolution_mm"], progress=True,
)
overview = pd.DataFrame([
    {"cohort": name, "manifest": r.manifest.name, "root": str(r.root), "clean subjects": len(r.subjects),
     "problems": len(r.problems), "warnings": len(r.warnings), "channels": ", ".join(r.manifest.modalities)}
    for name, r in results.items()
])
display(overview)
for name, r in results.items():
    for problem in r.problems:
        print(f"[{name}] {problem}")
if data_root is None:
    # synthetic data is made to be clean: any problem here is a bug in the generator or validator
    assert all(r.ok for r in results.values()), "synthetic cohorts must validate without problems"

# %%
datalist = combined_datalist(results)
write_json_atomic(out / "datalist.json", datalist)
print(f"datalist: {out / 'datalist.json'}")
print({name: len(datalist[name]) for name in results})

# %% [markdown]
# ## 2 · Volume QC
# Brain volume (nonzero voxels), intensity percentiles per channel inside the brain, lesion volume.
# `qc_pass` is False for an all-zero channel or a brain volume more than 3.5 robust z-scores from
# the cohort median (failed skull stripping, wrong field of view).

# %%
qc_tables = []
for name, r in results.items():
    table = volume_qc(r.subjects, r.manifest.modalities)
    table.insert(0, "cohort", name)
    qc_tables.append(table)
qc = pd.concat(qc_tables, ignore_index=True)
qc.to_csv(out / "qc.csv", index=False)
display(qc.head(12))
print(f"QC pass: {int(qc.qc_pass.sum())}/{len(qc)}")

# %%
fig = plot_qc_volumes(qc)  # intracranial volume (skull-stripped: nonzero voxels) and lesion volume
fig.savefig(figures / "qc_volumes.png", dpi=100)
plt.show()


# %% [markdown]
# ## 3 · Looking at the subjects
# Orthogonal views through the lesion's centroid, in the radiological convention (the patient's
# right on the left of coronal and axial views; the letters mark each side). BraTS compartments: necrotic core (1, red),
# edema (2, green), enhancing tumour (4, yellow), drawn as outlines over FLAIR and T1ce (so the
# appearance stays visible: edema bright on FLAIR, an enhancing rim on T1ce) and filled on T1ce.

# %%
def load(path):
    """A volume in RAS+ voxel order (whatever the file's) and its voxel size: figures are labelled."""
    data, spacing, _ = load_ras(path)
    return data, spacing

rows = []
tumor = results["tumor"]
with_lesion = [e for e in tumor.subjects if e.get("tumor_present", 1) == 1][: config["n_show"]]
for entry in with_lesion:
    label = load(entry["label"])[0].astype(np.uint8)
    point = tuple(int(c) for c in np.argwhere(label > 0).mean(axis=0).round())  # the same cut for every row
    about = f"{entry.get('tumor_type') or ''}, IDH {entry.get('idh') or 'NA'}"
    for channel, style in (("flair", "contour"), ("t1ce", "contour"), ("t1ce", "fill")):
        image, spacing = load(entry["image"][tumor.manifest.modalities.index(channel)])
        rows.append({"image": image, "label": label, "point": point, "style": style,
                     "title": f"{entry['subject']} {channel} ({about})"})
fig = plot_subjects(rows, spacing, colors=label_colors_for(tumor.manifest.label_names))
fig.savefig(figures / "tumor_subjects.png", dpi=90)
plt.show()

# %%
rows = []
for name, channel in (("healthy", 0), ("stroke", 0)):
    r = results[name]
    entry = r.subjects[0]
    image, spacing = load(entry["image"][channel])
    label = load(entry["label"])[0].astype(np.uint8) if entry.get("label") else None
    rows.append({"image": image, "label": label, "title": f"{name}: {entry['subject']} {r.manifest.modalities[channel]}"})
fig = plot_subjects(rows, spacing, colors=label_colors_for({0: "background", 1: "lesion"}))
fig.savefig(figures / "healthy_stroke_subjects.png", dpi=90)
plt.show()

# %% [markdown]
# ## 4 · Slice filter (tailored curation)
# Each axial slice gets its image entropy (bits; background excluded) and its relative position
# within the brain. Slices below the entropy threshold (little brain content) or outside the
# position window (skull base, vertex) are dropped. The paper's thresholds are unpublished: tune
# `entropy_threshold` and `position_window` here and watch the retained fraction.

# %%
slice_filter = SliceFilter(
    axis=config["slice_filter"]["axis"],
    entropy_threshold=config["slice_filter"]["entropy_threshold"],
    position_window=tuple(config["slice_filter"]["position_window"]),
)
slice_tables = []
for name, r in results.items():
    table = curate_slices(r.subjects, slice_filter, channel=0)
    table.insert(0, "cohort", name)
    slice_tables.append(table)
slices = pd.concat(slice_tables, ignore_index=True)
slices.to_csv(out / "slices.csv", index=False)
retained = {name: retained_fraction(slices[slices.cohort == name]) for name in results}
retained["all"] = retained_fraction(slices)
display(pd.DataFrame(retained).T)

# %%
fig = plot_entropy(slices, slice_filter.entropy_threshold, slice_filter.position_window,
                   title=f"retained fraction {retained['all']['both']:.0%} of {retained['all']['n_slices']} slices")
fig.savefig(figures / "slice_entropy.png", dpi=100)
plt.show()

# %% [markdown]
# The retained fraction per cohort and criterion, and example slices of one tumour subject that the
# filter keeps (top) and drops (bottom, with the reason). `kit.data.slices.SliceDataset` serves
# exactly the kept slices (or, with `curated=False`, all of them) from the preprocessing cache to
# MoCo v3 and to the slice classifiers.

# %%
fig = plot_retained_fraction(retained, title="slices kept by the filter")
fig.savefig(figures / "slice_retained.png", dpi=100)
plt.show()
example = results["tumor"].subjects[0]
fig = plot_kept_dropped(load(example["image"][0])[0], slices[(slices.cohort == "tumor") & (slices.subject == example["subject"])],
                        axis=slice_filter.axis, n=4, title=f"{example['subject']} {results['tumor'].manifest.modalities[0]}")
fig.savefig(figures / "slice_examples.png", dpi=90)
plt.show()

# %% [markdown]
# ## 5 · Explore (interactive only)
# With `interactive = True` in JupyterLab: sliders per axis, modality selector, lesion toggle and
# overlay opacity. For 3D, `kit.viz.viewer3d.niivue_view` works offline (ipyniivue ships its
# JavaScript); itkwidgets (`itk_view`) loads its viewer from the internet at render time and
# blocks headless runs, so the kit never calls it unless you do, in a live session.

# %%
if interactive:
    # needs a live kernel (JupyterLab): one slider per axis, modality, lesion overlay, opacity
    from kit.viz.explorer import subject_explorer
    display(subject_explorer(results["tumor"].subjects[0], results["tumor"].manifest.modalities,
                             label_colors_for(results["tumor"].manifest.label_names)))

# %%
write_summary(
    run_dir, "01_curation",
    f"{sum(len(r.subjects) for r in results.values())} clean subjects in {len(results)} cohorts; "
    f"slice filter keeps {retained['all']['both']:.0%} of slices",
    {
        **{f"subjects_{name}": len(r.subjects) for name, r in results.items()},
        "problems": sum(len(r.problems) for r in results.values()),
        "qc_pass": f"{int(qc.qc_pass.sum())}/{len(qc)}",
        "resolution_mm": config["resolution_mm"],
        "slices_retained_fraction": retained["all"]["both"],
        "entropy_threshold_bits": slice_filter.entropy_threshold,
        "position_window": list(slice_filter.position_window),
    },
    ["figures/qc_volumes.png", "figures/tumor_subjects.png", "figures/healthy_stroke_subjects.png",
     "figures/slice_entropy.png", "figures/slice_retained.png", "figures/slice_examples.png"],
)
print("stage 01 done")
