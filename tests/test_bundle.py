"""kit export-bundle: `python -m monai.bundle run` on BraTS-layout subjects gives kit predict's labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from kit.cli import main
from kit.data.cache import build_cache
from kit.data.synth import synth_cohort
from kit.predict import predict_files
from kit.finetune import FinetuneConfig, finetune

ROOT = Path(__file__).resolve().parents[1]
BRATS21 = {"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]}
MODALITIES = ["flair", "t1ce", "t1", "t2"]


@pytest.fixture(scope="module")
def subjects_and_checkpoint(tmp_path_factory):
    """Two synthetic tumour subjects (kit synth, 4 mm, BraTS 2021 layout) and a tiny segresnet_small fine-tune."""
    root = tmp_path_factory.mktemp("brats")
    ids = synth_cohort("tumor", "brats2021", n=2, out=root, seed=3, resolution_mm=4.0, progress=False)
    for path in (root / ids[1]).glob("*.nii.gz"):  # the second subject stored LPS, as many BraTS files are
        img = nib.load(path)
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = [img.shape[0] - 1, img.shape[1] - 1]
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1, ::-1].copy(), img.affine @ flip, img.header), path)
    assert nib.aff2axcodes(nib.load(root / ids[1] / f"{ids[1]}_flair.nii.gz").affine) == ("L", "P", "S")
    entries = [{"subject": s, "image": [str(root / s / f"{s}_{m}.nii.gz") for m in MODALITIES],
                "label": str(root / s / f"{s}_seg.nii.gz")} for s in ids]
    cache = build_cache(entries, MODALITIES, tmp_path_factory.mktemp("cache"), with_labels=True)
    config = FinetuneConfig(backbone="segresnet_small", model={"init_filters": 8}, steps=2, crop=32, input_size=32,
                            warmup_steps=0, sw_overlap=0.25, device="cpu")
    result = finetune(config, cache, [0, 1], regions=BRATS21, label_values=[0, 1, 2, 4])
    with torch.no_grad():  # a decisive output layer, so labels of every kind appear: TC/WT/ET by position
        final = result.model.conv_final[2].conv
        final.bias.copy_(torch.tensor([0.3, 0.5, -0.2]))
        final.weight.mul_(20.0)
    return root, ids, result.save(tmp_path_factory.mktemp("ckpt") / "seg.pt")


def test_bundle_run_equals_kit_predict(subjects_and_checkpoint, tmp_path, capsys):
    root, ids, checkpoint = subjects_and_checkpoint
    bundle = tmp_path / "bundle"
    assert main(["export-bundle", "--checkpoint", str(checkpoint), "--out", str(bundle), "--spacing", "4", "4", "4"]) == 0
    assert "python -m monai.bundle run" in capsys.readouterr().out
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["channel_def"] == {"0": "flair", "1": "t1ce", "2": "t1", "3": "t2"}
    assert image["num_channels"] == 4 and image["spacing_mm"] == [4.0, 4.0, 4.0]
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "scripts" / "kit_bundle.py").is_file()

    assert_bundle_equals_predict(bundle, checkpoint, root, ids, tmp_path)


def assert_bundle_equals_predict(bundle: Path, checkpoint: Path, root: Path, ids: list[str], tmp_path: Path,
                                 min_labels: int = 3) -> None:
    """`python -m monai.bundle run` without the kit on the path writes kit predict's label maps, subject by subject."""
    out = tmp_path / "out"
    # A clean environment without the kit on the path: the bundle stands alone.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(bundle),
               "--config_file", str(bundle / "configs" / "inference.json"),
               "--meta_file", str(bundle / "configs" / "metadata.json"),
               "--dataset_dir", str(root), "--output_dir", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}_seg.nii.gz" for s in ids)

    torch.set_num_threads(1)
    for subject in ids:
        inputs = [root / subject / f"{subject}_{m}.nii.gz" for m in MODALITIES]
        expected_file = predict_files(checkpoint, inputs, tmp_path / f"{subject}_kit.nii.gz", device="cpu")
        expected, got = nib.load(expected_file), nib.load(out / f"{subject}_seg.nii.gz")
        assert got.shape == expected.shape
        np.testing.assert_allclose(got.affine, expected.affine, atol=1e-5)
        want = np.asarray(expected.dataobj)
        assert len(np.unique(want)) >= min_labels, np.unique(want)  # the comparison covers several labels
        np.testing.assert_array_equal(np.asarray(got.dataobj).astype(np.uint8), want)


def test_bundle_of_a_legacy_merging_swinunetr_equals_kit_predict(subjects_and_checkpoint, tmp_path):
    """Imported published weights (patch_merging 'legacy', MONAI < 1.5's order) compute the same in the bundle."""
    root, ids, _ = subjects_and_checkpoint
    cache = build_cache([{"subject": s, "image": [str(root / s / f"{s}_{m}.nii.gz") for m in MODALITIES],
                          "label": str(root / s / f"{s}_seg.nii.gz")} for s in ids[:1]],
                        MODALITIES, tmp_path / "cache", with_labels=True)
    config = FinetuneConfig(backbone="swinunetr", model={"feature_size": 12, "patch_merging": "legacy"}, steps=1,
                            crop=64, input_size=64, warmup_steps=0, sw_overlap=0.25, device="cpu")
    result = finetune(config, cache, [0], regions=BRATS21, label_values=[0, 1, 2, 4])
    with torch.no_grad():  # a decisive output layer, so that labels of several kinds appear
        final = result.model.out.conv.conv
        final.bias.copy_(torch.tensor([0.3, 0.5, -0.2]))
        final.weight.mul_(50.0)
    checkpoint = result.save(tmp_path / "swin_legacy.pt")
    from kit.models.checkpoints import load_checkpoint
    from kit.models import create_model

    stored = load_checkpoint(checkpoint)
    assert stored["model_config"]["patch_merging"] == "legacy"
    # The setting matters for these weights: the current merging order computes other logits.
    current = create_model(**{**stored["model_config"], "patch_merging": "current"}).eval()
    current.load_state_dict(stored["state_dict"])
    x = torch.randn(1, 4, 64, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (current(x) - result.model.eval()(x)).abs().max() > 1e-2

    bundle = tmp_path / "bundle"
    assert main(["export-bundle", "--checkpoint", str(checkpoint), "--out", str(bundle), "--spacing", "4", "4", "4"]) == 0
    network = json.loads((bundle / "configs" / "inference.json").read_text())["network_def"]
    assert network["downsample"] == {"_target_": "scripts.patch_merging.LegacyPatchMerging", "_mode_": "callable"}
    assert "patch_merging" not in network and (bundle / "scripts" / "patch_merging.py").is_file()
    assert_bundle_equals_predict(bundle, checkpoint, root, ids, tmp_path, min_labels=2)


def test_export_refuses_an_existing_folder_and_a_non_segmentation_checkpoint(subjects_and_checkpoint, tmp_path, capsys):
    _, _, checkpoint = subjects_and_checkpoint
    (tmp_path / "taken").mkdir()
    assert main(["export-bundle", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "taken")]) == 1
    assert "exists" in capsys.readouterr().err
    from kit.models import create_model, save_checkpoint

    net = create_model("segresnet_small", in_channels=4)
    ssl = save_checkpoint(tmp_path / "ssl.pt", model_config=net.config, state_dict=net.state_dict(),
                          extra={"modalities": MODALITIES})
    assert main(["export-bundle", "--checkpoint", str(ssl), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert str(ssl) in err and not (tmp_path / "b").exists()
