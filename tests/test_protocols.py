"""Fine-tuning protocols (full, lp-ft, llrd), the minimum steps before early stopping, the head start."""

from __future__ import annotations

import pytest
import torch

from kit.finetune import FinetuneConfig, LabelledCropDataset, finetune
from kit.finetune.finetune import train_task
from kit.finetune.selection import ModelSelection
from kit.finetune.task import DiceBCELoss, build_finetune_model, encoder_depths, protocol_groups
from kit.data.regions import resolve_regions
from kit.models import create_model, load_checkpoint

from test_finetune import BRATS21, cache, small  # noqa: F401  (module fixture reused)


def _dataset(cache, indices=(0, 1)):  # noqa: F811
    images, labels = cache.images(), cache.labels()
    return LabelledCropDataset([images[i] for i in indices], [labels[i] for i in indices],
                               resolve_regions(BRATS21, [0, 1, 2, 4]), (16, 16, 16), 0.9, False)


def _encoder_state(model):
    prefixes = tuple(model.encoder_prefixes)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def test_encoder_depths_count_stages_from_the_top():
    seg = encoder_depths(create_model("segresnet_small", in_channels=2, init_filters=8))
    assert seg["convInit.conv.weight"] == 5 and seg["down_layers.3.0.conv.weight"] == 1
    assert sorted(set(seg.values())) == [1, 2, 3, 4, 5]
    swin = encoder_depths(create_model("swinunetr", in_channels=2, feature_size=12))
    assert swin["swinViT.patch_embed.proj.weight"] == 5
    assert {swin[n] for n in swin if n.startswith("swinViT.layers4")} == {1}
    assert {swin[n] for n in swin if n.startswith("swinViT.layers1")} == {4}
    assert not any(n.startswith(("encoder1.", "decoder", "out.")) for n in swin)  # decoder side: the head group


def test_llrd_gives_each_encoder_group_its_decayed_rate(cache, tmp_path):  # noqa: F811
    config = small(protocol="llrd", layer_decay=0.5, encoder_lr_scale=0.8, steps=3, warmup_steps=1, ckpt_every=1)
    model, _ = build_finetune_model(config, 2, ["flair", "t1ce"], 3)
    depths = encoder_depths(model)
    train_task(model, _dataset(cache), DiceBCELoss(), config, run_dir=tmp_path / "run")
    stored = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["extra"]["optimizer"]["param_groups"]
    by_name = {g["name"]: g for g in stored}
    assert by_name["head"]["initial_lr"] == pytest.approx(config.lr)
    for depth in sorted(set(depths.values())):
        group = by_name[f"encoder_depth{depth}"]
        assert group["initial_lr"] == pytest.approx(config.lr * 0.8 * 0.5 ** depth)
        # every parameter of the group sits at that depth, and each encoder parameter is in exactly one group
        assert len(group["params"]) == sum(1 for d in depths.values() if d == depth)
    assert sum(len(g["params"]) for g in stored) == sum(1 for p in model.parameters() if p.requires_grad)
    # one schedule for all: the groups' current lr over their peak is the same multiplier
    ratios = {round(g["lr"] / g["initial_lr"], 9) for g in stored}
    assert len(ratios) == 1


def test_lp_ft_keeps_the_encoder_during_the_probe_then_trains_it(cache, tmp_path):  # noqa: F811
    config = small(protocol="lp-ft", lp_steps=2, steps=4, lr=1e-2, warmup_steps=0)
    model, _ = build_finetune_model(config, 2, ["flair", "t1ce"], 3)
    start = _encoder_state(model)
    decoder_start = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("up_layers.")}
    snapshots = {}

    def snap(step, record):
        snapshots[step] = (_encoder_state(model), record["lr"])

    train_task(model, _dataset(cache), DiceBCELoss(), config, callback=snap, run_dir=tmp_path / "run")
    for step in (1, 2):  # the probe phase: encoder weights and buffers exactly as initialised
        assert all(torch.equal(snapshots[step][0][k], start[k]) for k in start), step
    changed = [k for k in start if not torch.equal(snapshots[3][0][k], start[k])]
    assert changed, "the encoder did not train after the probe phase"
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in decoder_start.items())  # the head trained
    assert all(p.requires_grad for p in model.parameters())  # released at the end
    groups = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["extra"]["optimizer"]["param_groups"]
    assert [(g["name"], g["start_step"]) for g in groups] == [("head", 0), ("encoder", 2)]


def test_full_protocol_is_todays_single_group_and_bad_settings_are_refused():
    net = create_model("segresnet_small", in_channels=1, init_filters=8)
    assert protocol_groups(net, FinetuneConfig()) is None
    with pytest.raises(ValueError, match="lp_steps"):
        FinetuneConfig(protocol="lp-ft", steps=10)  # no probe phase
    with pytest.raises(ValueError, match="lp_steps"):
        FinetuneConfig(protocol="lp-ft", steps=10, lp_steps=10)
    with pytest.raises(ValueError, match="layer_decay"):
        FinetuneConfig(layer_decay=0.5)  # would be ignored by 'full'
    with pytest.raises(ValueError, match="freeze_encoder"):
        FinetuneConfig(protocol="llrd", freeze_encoder=True)
    with pytest.raises(ValueError, match="protocol"):
        FinetuneConfig(protocol="linear")


def test_min_steps_holds_early_stopping_back(cache):  # noqa: F811
    net = torch.nn.Linear(1, 1)
    sel = ModelSelection(patience=1, min_steps=30)
    for step in (10, 20):
        sel.update(net, step, (0.5,))
    assert sel.bad == 1 and not sel.should_stop  # patience reached, but before min_steps
    sel.update(net, 30, (0.4,))
    assert sel.should_stop
    # end to end: a learning rate of 0 never improves the validation score after the first validation
    base = dict(steps=8, lr=0.0, val_every=1, patience=1, inference="whole")
    early = finetune(small(**base), cache, [0, 1], regions=BRATS21, val_indices=[2])
    held = finetune(small(**base, min_steps=5), cache, [0, 1], regions=BRATS21, val_indices=[2])
    assert early.summary["steps_run"] == 2 and early.summary["stopped_early"]
    assert held.summary["steps_run"] == 5 and held.summary["stopped_early"]
    # the head start: the first validation's score, recorded per run
    assert held.summary["val_first"] == pytest.approx(held.val_history[0]["val_dice_mean"])
    assert held.summary["val_first_step"] == 1 and held.summary["protocol"] == "full"


def test_settings_id_of_a_default_recipe_is_unchanged_by_the_protocol_fields():
    from kit.finetune.study import settings_id

    # the id this recipe had before the protocol fields existed: an existing study keeps its rows
    assert settings_id(FinetuneConfig(steps=10), ["s1"], ["s2"], ["s3"]) == "fe07b7b50fb9"
    assert settings_id(FinetuneConfig(steps=10, min_steps=5), ["s1"], ["s2"], ["s3"]) != "fe07b7b50fb9"
    lpft = FinetuneConfig(steps=10, protocol="lp-ft", lp_steps=3)
    assert settings_id(lpft, ["s1"], ["s2"], ["s3"]) != "fe07b7b50fb9"
