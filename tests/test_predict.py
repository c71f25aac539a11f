"""kit predict: cache-identical preprocessing, un-cropping into the input grid, NIfTI output, datasets, CLI."""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from kit.data.cache import build_cache
from kit.models import CheckpointError
from kit.cli.predict import add_predict_parser
from kit.predict import _channel_order, load_segmenter, predict_dataset, predict_files, preprocess_inputs, segment_files
from kit.finetune import FinetuneConfig, finetune

BRATS21 = {"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]}
SHAPE = (34, 30, 26)
# Oblique, flipped, shifted grid: an affine that only survives if it is copied, not rebuilt.
AFFINE = np.array([[0.0, -2.0, 0.0, 40.0], [1.5, 0.0, 0.0, -60.0], [0.0, 0.0, 2.5, -20.0], [0, 0, 0, 1]])
MANIFEST = """name: toy
subjects: "sub-*"
images:
  - {name: t1ce, pattern: "{subject}_t1ce.nii.gz"}
  - {name: flair, pattern: "{subject}_flair.nii.gz"}
label: {pattern: "{subject}_seg.nii.gz", required: true, values: [0, 1, 2, 4]}
regions: {TC: [1, 4], WT: [1, 2, 4], ET: [4]}
"""


def write_subject(folder, subject, rng, with_label=True):
    """An off-centre box brain and a nested tumour; flair shows the tumour. Returns ({name: file}, label)."""
    folder.mkdir(parents=True, exist_ok=True)
    brain = np.zeros(SHAPE, bool)
    brain[6:30, 3:25, 5:22] = True
    label = np.zeros(SHAPE, np.uint8)
    c = rng.integers([14, 10, 11], [20, 16, 15])
    label[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] - 3 : c[2] + 3] = 2
    label[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 4
    label[c[0] - 1 : c[0] + 1, c[1] - 1 : c[1] + 1, c[2] - 1 : c[2] + 1] = 1
    files = {}
    for m in ("flair", "t1ce"):
        a = np.where(brain, 100 + rng.normal(0, 2, SHAPE), 0).astype(np.float32)
        a[label > 0] += 150 if m == "flair" else 0
        a[label == 4] += 0 if m == "flair" else 200
        files[m] = folder / f"{subject}_{m}.nii.gz"
        nib.save(nib.Nifti1Image(a, AFFINE), files[m])
    if with_label:
        nib.save(nib.Nifti1Image(label, AFFINE), folder / f"{subject}_seg.nii.gz")
    return files, label


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three labelled subjects (cached for training), one unlabelled; a toy manifest."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(5)
    subjects = {}
    for i in range(3):
        subjects[f"sub-{i}"] = write_subject(root / f"sub-{i}", f"sub-{i}", rng)
    subjects["sub-3"] = write_subject(root / "sub-3", "sub-3", rng, with_label=False)
    (root / "toy.yaml").write_text(MANIFEST)
    entries = [{"subject": s, "image": [str(f["flair"]), str(f["t1ce"])], "label": str(root / s / f"{s}_seg.nii.gz")}
               for s, (f, _) in list(subjects.items())[:3]]
    cache = build_cache(entries, ["flair", "t1ce"], root / "cache")
    return root, subjects, cache


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A real (2-step) fine-tune, whose output layer is then set to say 'ET' everywhere."""
    _, _, cache = data
    config = FinetuneConfig(backbone="segresnet_small", model={"init_filters": 8}, steps=2, crop=16,
                            warmup_steps=0, device="cpu")
    result = finetune(config, cache, [0, 1, 2], regions=BRATS21, label_values=[0, 1, 2, 4])
    with torch.no_grad():
        result.model.conv_final[2].conv.weight.zero_()
        result.model.conv_final[2].conv.bias.fill_(20.0)
    return result.save(tmp_path_factory.mktemp("ckpt") / "seg.pt")


def test_preprocessing_is_the_cache_preprocessing(data):
    _, subjects, cache = data
    files, _ = subjects["sub-1"]
    prepared = preprocess_inputs([files["flair"], files["t1ce"]])
    cached = np.asarray(cache.images()[1])
    assert prepared.image.shape == cached.shape and np.allclose(prepared.image.numpy(), cached, atol=1e-6)
    assert list(prepared.crop_start) == cache.entries[1]["crop_start"]
    # both in RAS+ voxel order: AFFINE's voxel axis 0 runs to anterior, axis 1 to the left
    assert list(prepared.original_shape) == cache.entries[1]["original_shape"] == [SHAPE[1], SHAPE[0], SHAPE[2]]
    assert int(prepared.brain.sum()) == 24 * 22 * 17


def test_segment_files_uncrops_into_the_input_grid(data):
    _, subjects, _ = data
    files, label = subjects["sub-2"]
    net = nn.Conv3d(2, 3, kernel_size=1)  # bright flair (z-scored) -> every region -> label 4
    with torch.no_grad():
        net.weight.zero_()
        net.weight[:, 0] = 10.0
        net.bias.fill_(-10.0)
    out = segment_files(net, [files["flair"], files["t1ce"]], BRATS21, roi=16, overlap=0.5)
    assert out.shape == SHAPE and out.dtype == np.uint8
    assert np.array_equal(out > 0, label > 0) and set(np.unique(out)) == {0, 4}


def test_predict_files_round_trips_shape_affine_and_header(data, checkpoint, tmp_path):
    _, subjects, _ = data
    files, _ = subjects["sub-0"]
    out = predict_files(checkpoint, [files["flair"], files["t1ce"]], tmp_path / "pred" / "sub-0.nii.gz", device="cpu")
    written, reference = nib.load(out), nib.load(files["flair"])
    assert written.shape == reference.shape and np.allclose(written.affine, reference.affine)
    assert written.get_data_dtype() == np.uint8
    assert written.header.get_zooms() == pytest.approx(reference.header.get_zooms())
    labels = np.asarray(written.dataobj)
    brain = np.asarray(reference.dataobj) > 0
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    assert np.array_equal(labels > 0, brain)  # 'ET everywhere' model: exactly the brain, nothing outside
    assert not list(out.parent.glob(".*"))  # no temporary file left behind
    with pytest.raises(ValueError, match="reads 2 contrasts"):
        predict_files(checkpoint, [files["flair"]], tmp_path / "x.nii.gz", device="cpu")
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        predict_files(checkpoint, [files["flair"], tmp_path / "nope.nii.gz"], tmp_path / "x.nii.gz", device="cpu")
    with pytest.raises(ValueError, match="NIfTI"):
        predict_files(checkpoint, [files["flair"], files["t1ce"]], tmp_path / "x.png", device="cpu")


def test_predict_dataset_writes_one_file_per_subject(data, checkpoint, tmp_path):
    root, subjects, _ = data
    summary = predict_dataset(checkpoint, root / "toy.yaml", root, tmp_path / "preds", device="cpu")
    assert summary["problems"] == []  # the unlabelled subject is fine: labels are optional for prediction
    assert summary["subjects"] == ["sub-0", "sub-1", "sub-2", "sub-3"]
    assert sorted(p.name for p in (tmp_path / "preds").iterdir()) == [f"sub-{i}.nii.gz" for i in range(4)]
    for subject, (files, _) in subjects.items():
        written = nib.load(tmp_path / "preds" / f"{subject}.nii.gz")
        assert written.shape == SHAPE and np.allclose(written.affine, AFFINE)
    # the same as predicting the subject's files one by one
    files, _ = subjects["sub-3"]
    direct = predict_files(checkpoint, [files["flair"], files["t1ce"]], tmp_path / "sub-3.nii.gz", device="cpu")
    written = nib.load(tmp_path / "preds" / "sub-3.nii.gz")
    assert np.array_equal(np.asarray(written.dataobj), np.asarray(nib.load(direct).dataobj))


def test_channels_are_matched_by_contrast_name():
    # the toy manifest lists (t1ce, flair); a model trained on (flair, t1ce) takes them swapped
    assert _channel_order(["flair", "t1ce"], ["t1ce", "flair"], "x") == [1, 0]
    assert _channel_order(["T2-FLAIR", "T1Gd"], ["t1ce", "flair"], "x") == [1, 0]  # canonical names
    with pytest.raises(ValueError, match="no 't2' image"):
        _channel_order(["flair", "t2"], ["t1ce", "flair"], "x")


def test_cli_predict(data, checkpoint, tmp_path, capsys):
    root, subjects, _ = data
    parser = argparse.ArgumentParser(prog="kit")
    add_predict_parser(parser.add_subparsers(dest="command", required=True))
    files, _ = subjects["sub-1"]
    args = parser.parse_args(["predict", "--checkpoint", str(checkpoint), "--inputs", str(files["flair"]),
                              str(files["t1ce"]), "--out", str(tmp_path / "one.nii.gz"), "--device", "cpu"])
    assert args.func(args) == 0 and (tmp_path / "one.nii.gz").exists()
    # a broken subject: reported (file and reason), the others written, exit code 1
    broken = write_subject(root.parent / "broken" / "sub-9", "sub-9", np.random.default_rng(0))[0]
    broken["t1ce"].unlink()
    for s in ("sub-0", "sub-1"):
        write_subject(root.parent / "broken" / s, s, np.random.default_rng(1))
    args = parser.parse_args(["predict", "--checkpoint", str(checkpoint), "--manifest", str(root / "toy.yaml"),
                              "--root", str(root.parent / "broken"), "--out", str(tmp_path / "many"),
                              "--device", "cpu", "--quiet"])
    assert args.func(args) == 1
    printed = capsys.readouterr()
    assert "sub-9_t1ce.nii.gz" in printed.out and "wrote 2 label maps" in printed.err
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["sub-0.nii.gz", "sub-1.nii.gz"]
    # --manifest without --root, and a checkpoint that is not a segmentation fine-tune
    args = parser.parse_args(["predict", "--checkpoint", str(checkpoint), "--manifest", "toy", "--out", "x"])
    assert args.func(args) == 2
    not_seg = tmp_path / "ssl.pt"
    torch.save({"format": "brainfm-kit/1", "model_config": {"name": "segresnet_small", "in_channels": 2},
                "state_dict": {}, "extra": {}}, not_seg)
    with pytest.raises(CheckpointError, match="not a fine-tuned checkpoint"):
        predict_files(not_seg, [files["flair"], files["t1ce"]], tmp_path / "y.nii.gz")


def test_predict_gives_the_same_labels_in_world_space_for_ras_and_lps_files(data, tmp_path):
    """One subject saved in its own voxel order and flipped to another (same world): same labels in world space.

    The network is a real 2-step fine-tune (not symmetric under flips), thresholded near its median so
    that about half the brain is labelled: without reorientation the two label maps differ.
    """
    from kit.data.orientation import axcodes

    root, subjects, cache = data
    config = FinetuneConfig(backbone="segresnet_small", model={"init_filters": 8}, steps=2, crop=16,
                            warmup_steps=0, device="cpu", seed=3)
    ckpt = finetune(config, cache, [0, 1, 2], regions=BRATS21, label_values=[0, 1, 2, 4]).save(tmp_path / "seg.pt")
    files, _ = subjects["sub-3"]
    flipped = {}
    for name, path in files.items():
        img = nib.load(path)
        flip = np.eye(4)
        flip[0, 0], flip[1, 1] = -1, -1
        flip[:2, 3] = [img.shape[0] - 1, img.shape[1] - 1]
        flipped[name] = tmp_path / f"flipped_{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1, ::-1].copy(), img.affine @ flip), flipped[name])
    assert axcodes(nib.load(files["flair"]).affine) != axcodes(nib.load(flipped["flair"]).affine)
    prepared = preprocess_inputs([files["flair"], files["t1ce"]])
    model, _ = load_segmenter(ckpt, device="cpu")
    from kit.models.inference import predict_volume

    probs = predict_volume(model, prepared.image, 16, 0.5, 1, amp="off")[:, prepared.brain]
    threshold = float(probs[0].median())
    out = {}
    for name, group in (("own", files), ("flipped", flipped)):
        out[name] = predict_files(ckpt, [group["flair"], group["t1ce"]], tmp_path / f"{name}_seg.nii.gz",
                                  device="cpu", threshold=threshold)
    own, other = nib.load(out["own"]), nib.load(out["flipped"])
    np.testing.assert_allclose(other.affine, nib.load(flipped["flair"]).affine)  # written in the input's grid
    own_labels = np.asarray(own.dataobj)
    assert 0 < np.count_nonzero(own_labels) < int(prepared.brain.sum())  # a non-trivial map
    # the same voxel in world space: flip the second map back onto the first one's grid
    np.testing.assert_array_equal(np.asarray(other.dataobj)[::-1, ::-1], own_labels)
