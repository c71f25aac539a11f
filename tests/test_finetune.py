"""Fine-tuning on a real cache of small NIfTI files: regions, crops, loss, freezing, SSL initialisation."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from kit.data.cache import build_cache
from kit.data.manifest import load_manifest, parse_manifest
from kit.models import CheckpointError, create_model, load_checkpoint, save_checkpoint, transfer_input_channels
from kit.ssl import create_objective
from kit.finetune import (
    ClassificationModel,
    DiceBCELoss,
    FinetuneConfig,
    LabelledCropDataset,
    build_finetune_model,
    class_table,
    classification_input,
    finetune,
    load_finetuned,
)
from kit.train.loop import TrainConfig, train
from kit.data.regions import labels_to_regions, region_paint_order, regions_to_labels, resolve_regions
from kit.train.sampling import ArrayCropDataset

BRATS21 = {"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]}
SHAPE = (36, 40, 32)
AFFINE = np.array([[-2.0, 0, 0, 70], [0, 2.0, 0, -80], [0, 0, 2.5, -40], [0, 0, 0, 1]])


def write_subject(folder, subject, rng, tumour=True, et_value=4, modalities=("flair", "t1ce")):
    """Ellipsoid brain; nested tumour (edema 2 > enhancing et_value > necrosis 1); flair shows the
    whole tumour, t1ce the enhancing rim (bright) and the necrosis (dark). Returns (files, label file)."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1).astype(float)
    centre = np.array(SHAPE) / 2.0
    brain = (((grid - centre) / np.array([15, 17, 13])) ** 2).sum(-1) <= 1
    label = np.zeros(SHAPE, np.uint8)
    if tumour:
        c = centre + rng.integers(-4, 5, size=3)
        r = np.sqrt(((grid - c) ** 2).sum(-1))
        label[(r <= 6) & brain] = 2
        label[(r <= 4) & brain] = et_value
        label[(r <= 2) & brain] = 1
    files = []
    for m in modalities:
        a = np.where(brain, 100.0, 0.0)
        if m == "flair":
            a[label > 0] = 260.0
        else:
            a[label == et_value], a[label == 1] = 300.0, 40.0
        a = np.where(brain, a + rng.normal(0, 3, SHAPE), 0.0).astype(np.float32)
        path = folder / f"{subject}_{m}.nii.gz"
        nib.save(nib.Nifti1Image(a, AFFINE), path)
        files.append(str(path))
    label_path = folder / f"{subject}_seg.nii.gz"
    nib.save(nib.Nifti1Image(label, AFFINE), label_path)
    return files, str(label_path)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    entries = []
    for i, tumour in enumerate([True, True, True, False]):
        files, label = write_subject(folder, f"s{i}", rng, tumour)
        entries.append({"subject": f"s{i}", "image": files, "label": label, "tumor_present": int(tumour)})
    return build_cache(entries, ["flair", "t1ce"], folder / "cache")


def small(**kw):
    base = dict(backbone="segresnet_small", model={"init_filters": 8}, steps=3, batch_size=2, lr=1e-3,
                warmup_steps=0, crop=16, device="cpu", augment=False)
    return FinetuneConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- regions


@pytest.mark.parametrize("name", ["brats2021", "brats2023"])
def test_regions_round_trip_brats(name):
    manifest = load_manifest(name)
    regions = resolve_regions(manifest.regions, manifest.label_values)
    et = regions["ET"][0]
    label = np.zeros((1, 12, 10, 8), np.uint8)
    label[0, 1:9, 1:8, 1:7] = 2
    label[0, 3:7, 3:6, 2:6] = et
    label[0, 4:6, 4:5, 3:5] = 1
    r = labels_to_regions(label, regions)
    assert r.shape == (3, 12, 10, 8) and r.dtype == np.float32
    assert r[list(regions).index("WT")].sum() == (label > 0).sum()
    assert r[list(regions).index("ET")].sum() == (label == et).sum()
    assert np.array_equal(regions_to_labels(r, regions), label)
    # probabilities, torch, a batch
    batch = torch.from_numpy(np.stack([label, np.zeros_like(label)]))
    probs = labels_to_regions(batch, regions) * 0.8 + 0.1
    back = regions_to_labels(probs, regions)
    assert back.dtype == torch.uint8 and torch.equal(back, batch)
    assert set(np.unique(back.numpy())) <= set(manifest.label_values)


def test_regions_stroke_and_bad_definitions():
    stroke = parse_manifest({"name": "stroke", "subjects": "sub-*", "images": [{"name": "t1", "pattern": "{subject}.nii"}],
                             "label": {"pattern": "{subject}_mask.nii", "values": [0, 1]}})
    regions = resolve_regions(stroke.regions, stroke.label_values)
    assert regions == {"lesion": (1,)}
    label = (np.random.default_rng(1).random((1, 6, 6, 6)) > 0.7).astype(np.uint8)
    assert np.array_equal(regions_to_labels(labels_to_regions(label, regions), regions), label)
    assert region_paint_order(BRATS21) == [("WT", 2), ("TC", 1), ("ET", 4)]
    with pytest.raises(ValueError, match="overlap without nesting"):
        region_paint_order({"A": [1, 2], "B": [2, 3]})
    with pytest.raises(ValueError, match="regions"):
        resolve_regions(None, [0])


# ----------------------------------------------------------------------------- data


def test_labelled_crops_are_keyed_and_foreground_biased(cache):
    images, labels = cache.images()[:3], cache.labels()[:3]
    ds = LabelledCropDataset(images, labels, BRATS21, 16, pos_fraction=1.0, augment=True)
    x, y = ds[(1, 77)]
    assert x.shape == (2, 16, 16, 16) and y.shape == (3, 16, 16, 16)
    x2, y2 = ds[(1, 77)]
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, ds[(1, 78)][0])
    # small crops: with the bias every one holds tumour (WT), without it many miss the tumour
    biased = LabelledCropDataset(images, labels, BRATS21, 6, pos_fraction=1.0)
    uniform = LabelledCropDataset(images, labels, BRATS21, 6, pos_fraction=0.0)
    assert all(biased[(s % 3, s)][1][1].sum() > 0 for s in range(30))
    assert sum(float(uniform[(s % 3, s)][1][1].sum()) == 0 for s in range(30)) >= 10
    # targets are the region channels of the label crop: nested
    assert torch.all(y[2] <= y[0]) and torch.all(y[0] <= y[1])


def test_classification_input_and_classes():
    volume = np.zeros((1, 40, 20, 10), np.float32)
    volume[0, 10:30, 5:15, 2:8] = 1
    out = classification_input(volume, 32)
    assert out.shape == (1, 32, 32, 32) and out.dtype == torch.float32
    assert out[0, :, 16, 16].gt(0.5).sum() == 16  # 20 of 40 voxels, scaled by 32/40
    assert class_table([1, 0, None, 1, "NA"]) == [0, 1]


def test_dice_bce_loss_is_per_channel():
    logits = torch.tensor([3.0, -3.0, 3.0]).reshape(1, 3, 1, 1, 1).expand(1, 3, 4, 4, 4).contiguous()
    target = torch.tensor([1.0, 0.0, 1.0]).reshape(1, 3, 1, 1, 1).expand(1, 3, 4, 4, 4)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    bce_only = DiceBCELoss(lambda_dice=0.0)(logits, target)
    assert torch.allclose(bce_only, expected)  # a softmax CE over channels would differ


# ----------------------------------------------------------------------------- training


def test_finetune_segmentation_loss_decreases(cache):
    config = small(steps=20, lr=1e-2, pos_fraction=0.8)
    result = finetune(config, cache, [0, 1, 2], regions=BRATS21)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert result.regions == BRATS21 and result.train_subjects == ["s0", "s1", "s2"]
    assert result.summary["n_train"] == 3 and result.load_report is None
    assert not result.model.training


def test_finetune_is_deterministic_and_freeze_encoder_freezes(cache):
    config = small(freeze_encoder=True, steps=3, lr=1e-2)
    fresh, _ = build_finetune_model(config, 2, ["flair", "t1ce"], 3)  # same seed: same initial weights
    result = finetune(config, cache, [0, 1], regions=BRATS21)
    encoder = fresh.encoder_prefixes
    before, after = fresh.state_dict(), result.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith(encoder) for k in changed)
    assert any(k.startswith("up_layers") for k in changed) and any(k.startswith("conv_final") for k in changed)
    assert all(not p.requires_grad for n, p in result.model.named_parameters() if n.startswith(encoder))
    again = finetune(config, cache, [0, 1], regions=BRATS21)
    assert [r["loss"] for r in again.history] == [r["loss"] for r in result.history]


def test_finetune_classification_saves_and_reloads(cache, tmp_path):
    config = small(task="classification", target="tumor_present", input_size=16, steps=4, freeze_encoder=True)
    result = finetune(config, cache, [0, 1, 2, 3])
    assert isinstance(result.model, ClassificationModel) and result.classes == [0, 1]
    assert result.model.n_outputs == 1 and len(result.history) == 4
    # linear probe: only the head moved
    fresh, _ = build_finetune_model(config, 2, ["flair", "t1ce"], 1)
    changed = {k for k, v in fresh.state_dict().items() if not torch.equal(v, result.model.state_dict()[k])}
    assert changed == {"head.fc.weight", "head.fc.bias"}
    path = result.save(tmp_path / "cls.pt")
    model, extra = load_finetuned(path)
    assert extra["task"] == "classification" and extra["classes"] == [0, 1] and extra["target"] == "tumor_present"
    x = torch.randn(2, 2, 16, 16, 16)
    assert torch.equal(model(x), result.model(x))
    with pytest.raises(ValueError, match="at least two"):
        finetune(config, cache, [0, 1])  # tumour subjects only


def test_avgmax_head_sees_a_small_lesion_and_reloads(cache, tmp_path):
    from kit.models.heads import ClassificationHead

    # one hot voxel in 4^3: the mean moves by 1/64 of it, the maximum by all of it
    head = ClassificationHead(1, 1, pool="avgmax")
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[0.0, 1.0]]))
        head.fc.bias.zero_()
    quiet, hot = torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4)
    hot[0, 0, 1, 2, 3] = 8.0
    assert head(quiet).item() == 0.0 and head(hot).item() == 8.0
    with pytest.raises(ValueError, match="pool must be one of"):
        ClassificationHead(4, 1, pool="max")
    with pytest.raises(ValueError, match="head_pool"):
        small(task="classification", target="tumor_present", head_pool="sum")
    config = small(task="classification", target="tumor_present", input_size=16, steps=2, head_pool="avgmax")
    result = finetune(config, cache, [0, 1, 2, 3])
    assert result.model.head.fc.in_features == 2 * result.model.backbone.feature_dim
    model, extra = load_finetuned(result.save(tmp_path / "cls.pt"))
    assert extra["head"]["pool"] == "avgmax"
    x = torch.randn(2, 2, 16, 16, 16)
    assert torch.equal(model(x), result.model(x))


# ----------------------------------------------------------------------------- SSL initialisation


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory):
    """A real (1-step) swin_trio stage on t1 + flair, written by the training loop."""
    run_dir = tmp_path_factory.mktemp("ssl")
    rng = np.random.default_rng(3)
    volumes = [rng.random((2, 36, 36, 36)).astype(np.float32) for _ in range(2)]
    torch.manual_seed(0)
    objective = create_objective("swin_trio", create_model("segresnet_small", in_channels=2, init_filters=8))
    train(objective, ArrayCropDataset(volumes, 32), TrainConfig(steps=1, batch_size=2, device="cpu", progress=False),
          run_dir, modalities=["t1", "flair"])
    return run_dir / "checkpoint.pt", objective


def test_init_from_ssl_checkpoint_loads_the_encoder(cache, ssl_run):
    path, _ = ssl_run
    ckpt = load_checkpoint(path)
    stored = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    config = small(init=str(path), transfer="encoder", seed=1)  # seed 1: another init than the SSL run's
    model, report = build_finetune_model(config, 2, ["flair", "t1ce"], 3)
    state = model.state_dict()
    encoder = [k for k in state if k.startswith(model.encoder_prefixes)]
    for key in encoder:
        if key == model.first_conv_key:  # t1 + flair -> flair + t1ce (t1ce from t1), mapped by name
            assert torch.equal(state[key], transfer_input_channels(stored[key], ["t1", "flair"], ["flair", "t1ce"]))
        else:
            assert torch.equal(state[key], stored[key]), key
    assert report.transferred == [model.first_conv_key]
    assert not report.missing and not report.shape_mismatched
    assert set(report.loaded) == set(encoder)
    assert "up_layers.0.0.conv1.conv.weight" in report.dropped
    assert not torch.equal(state["up_layers.0.0.conv1.conv.weight"], stored["up_layers.0.0.conv1.conv.weight"])
    # full transfer: the decoder too, but never the output layer
    model, report = build_finetune_model(small(init=str(path), transfer="full"), 2, ["flair", "t1ce"], 3)
    assert torch.equal(model.state_dict()["up_layers.0.0.conv1.conv.weight"], stored["up_layers.0.0.conv1.conv.weight"])
    assert set(report.dropped) == {"conv_final.2.conv.weight", "conv_final.2.conv.bias"}
    # fine-tuning from it runs and reports the transfer
    result = finetune(small(init=str(path), transfer="encoder", steps=2), cache, [0, 1], regions=BRATS21)
    assert "encoder transfer" in result.summary["init_report"]


def test_objective_state_dict_prefix_and_heads_are_stripped(ssl_run, tmp_path):
    _, objective = ssl_run
    path = save_checkpoint(tmp_path / "objective.pt", model_config=objective.model.config,
                           state_dict=objective.state_dict(), extra={"modalities": ["t1", "flair"]})
    model, report = build_finetune_model(small(init=str(path), transfer="encoder"), 2, ["t1", "flair"], 3)
    assert any("took the backbone from keys under 'model.'" in n for n in report.notes)
    heads = [k for k in objective.state_dict() if not k.startswith("model.")]
    assert heads and set(heads) <= set(report.dropped)
    assert torch.equal(model.state_dict()["convInit.conv.weight"], objective.model.state_dict()["convInit.conv.weight"])
    assert not report.transferred  # same contrasts, same order


def test_mismatches_are_reported_never_silent(ssl_run, tmp_path):
    path, _ = ssl_run
    ckpt = load_checkpoint(path)
    state = dict(ckpt["state_dict"])
    odd = "down_layers.1.1.conv1.conv.weight"
    state[odd] = torch.zeros(3, 3, 1, 1, 1)
    del state["down_layers.2.1.conv1.conv.weight"]
    state["extra_block.weight"] = torch.zeros(2)
    bad = save_checkpoint(tmp_path / "bad.pt", model_config=ckpt["model_config"], state_dict=state,
                          extra={"modalities": ["t1", "flair"]})
    with pytest.warns(UserWarning, match="partly transferred"):
        model, report = build_finetune_model(small(init=str(bad), transfer="full"), 2, ["t1", "flair"], 3)
    assert [k for k, _, _ in report.shape_mismatched] == [odd]
    assert report.missing == ["down_layers.2.1.conv1.conv.weight"]
    assert report.unexpected == ["extra_block.weight"]
    assert odd in report.summary() and "down_layers.2.1.conv1.conv.weight" in report.summary()
    # a clean checkpoint gives no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_finetune_model(small(init=str(path), transfer="full"), 2, ["t1", "flair"], 3)
    # another architecture: nothing fits the encoder -> an error, not a half-loaded model
    with pytest.raises(CheckpointError, match="none of its tensors fits the encoder"):
        build_finetune_model(small(init=str(path), model={"init_filters": 16}), 2, ["t1", "flair"], 3)
    with pytest.raises(ValueError, match="swinunetr"):
        build_finetune_model(small(init=str(path), backbone="swinunetr"), 2, ["t1", "flair"], 3)


@pytest.mark.parametrize("objective", ["cross_contrast", "mim", "anatomy_hierarchy"])
def test_study_inits_carry_the_objective_and_load_its_checkpoint(cache, tmp_path, objective):
    """A stage pretrained with another objective fine-tunes like swin_trio's; its init is named and recorded."""
    import pandas as pd

    from kit.finetune.study import init_name, kept_model_path, run_study
    from kit.train.provenance import record_seen_subjects

    rng = np.random.default_rng(4)
    volumes = [rng.random((2, 36, 36, 36)).astype(np.float32) for _ in range(2)]
    torch.manual_seed(0)
    ssl = create_objective(objective, create_model("segresnet_small", in_channels=2, init_filters=8))
    train(ssl, ArrayCropDataset(volumes, 32), TrainConfig(steps=1, batch_size=2, device="cpu", progress=False),
          tmp_path / "ssl", modalities=["flair", "t1ce"])
    # what a pretraining stage records (kit.train.pretrain.run_pretraining): none of the study's subjects
    record_seen_subjects(tmp_path / "ssl", "pool", ["unlabelled_0", "unlabelled_1"], cohort="tumor_pool")
    label = init_name("stage1+2", objective)
    assert label == f"{objective}:stage1+2"
    spec = {"name": "tumor_seg", "task": "segmentation", "cohort": "tumor", "pool": "lesion",
            "inits": ["scratch", "stage1+2"]}  # plain stage names in a profile match the objective's inits
    results = run_study({"tumor": cache}, [spec], {"scratch": "scratch", label: str(tmp_path / "ssl" / "checkpoint.pt"),
                                                  "other:stage1": "scratch"},
                        [1.0], [0], dict(backbone="segresnet_small", model={"init_filters": 8}, steps=1, batch_size=2,
                                         crop=16, input_size=16, warmup_steps=0, augment=False),
                        tmp_path / "results.csv", test_fraction=0.34, device="cpu", progress=False,
                        regions={"tumor": BRATS21}, label_values={"tumor": [0, 1, 2, 4]},
                        save_models=lambda init, task, f, s: kept_model_path(tmp_path / "models", task, init))
    assert list(results.init) == ["scratch", label]  # 'other:stage1' is not in the task's inits
    assert list(results.objective) == ["none", objective]
    model, extra = load_finetuned(tmp_path / "models" / f"tumor_seg__{objective}-stage1+2.pt")
    assert extra["study_key"][0] == label
    assert pd.read_csv(tmp_path / "results.csv").objective.tolist() == ["none", objective]
