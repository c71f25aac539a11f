"""kit.models.checkpoints: atomic save, safe load, loud weight loading, input-channel transfer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kit.models import (
    CheckpointError,
    KeyMismatchError,
    build_from_checkpoint,
    create_model,
    load_checkpoint,
    load_weights,
    normalize_state_dict,
    read_state_dict,
    save_checkpoint,
    transfer_input_channels,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _small(in_channels: int = 2, **cfg):
    return create_model("segresnet_small", in_channels=in_channels, **cfg)


def _trained_optimizer(net):
    """An AdamW whose state is populated by one real step (tensors in the optimizer state)."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(1, net.in_channels, 16, 16, 16)).mean().backward()
    opt.step()
    return opt


def test_round_trip_is_bit_exact_and_keeps_extra(tmp_path):
    net = _small()
    opt = _trained_optimizer(net)
    extra = {
        "modalities": ["t1", "flair"],
        "step": 7,
        "optimizer": opt.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": list(np.random.default_rng(0).bit_generator.state["state"].values())},
        "metrics": [{"step": 1, "loss": 2.5}],
    }
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", model_config=net.config, state_dict=net.state_dict(), extra=extra)
    assert path == tmp_path / "run" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "brainfm-kit/1" and ckpt["model_config"] == net.config
    saved = net.state_dict()
    assert list(ckpt["state_dict"]) == list(saved)
    assert all(torch.equal(ckpt["state_dict"][k], v) and ckpt["state_dict"][k].dtype == v.dtype for k, v in saved.items())
    assert ckpt["extra"]["step"] == 7 and ckpt["extra"]["metrics"] == extra["metrics"]
    assert torch.equal(ckpt["extra"]["rng"]["torch"], extra["rng"]["torch"])
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["extra"]["optimizer"])
    state_a, state_b = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(state_a[i]["exp_avg"], state_b[i]["exp_avg"]) for i in state_a)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_write_failure_leaves_the_old_file_intact(tmp_path, monkeypatch):
    net = _small()
    path = save_checkpoint(tmp_path / "c.pt", model_config=net.config, state_dict=net.state_dict(), extra={"step": 1})
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, model_config=net.config, state_dict=net.state_dict(), extra={"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["extra"]["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]

    # A crash in the middle of torch.save (partial bytes written): same outcome.
    real_save = torch.save

    def crashing_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04partial")
        raise RuntimeError("killed mid-write (simulated)")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="mid-write"):
        save_checkpoint(path, model_config=net.config, state_dict=net.state_dict(), extra={"step": 3})
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_unloadable_extra_is_refused_at_save_time_naming_the_key(tmp_path):
    net = _small()
    path = save_checkpoint(tmp_path / "c.pt", model_config=net.config, state_dict=net.state_dict(), extra={"step": 1})
    with pytest.raises(CheckpointError, match=r"extra\['rng'\]\['numpy'\]"):
        save_checkpoint(path, model_config=net.config, state_dict=net.state_dict(), extra={"rng": {"numpy": np.zeros(3)}})
    assert load_checkpoint(path)["extra"]["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


class _Payload:
    """Pickles to a call that would create a file: a weights_only loader must never run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_is_weights_only_and_errors_name_the_file(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "brainfm-kit/1", "model_config": {}, "state_dict": {}, "extra": {"x": _Payload(marker)}}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    assert not marker.exists()

    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_checkpoint(tmp_path / "nothere.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="corrupt.pt: cannot read"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"epoch": 3, "state_dict": {"module.w": torch.ones(2)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a brainfm-kit/1 checkpoint"):
        load_checkpoint(foreign)
    assert list(read_state_dict(foreign)) == ["module.w"]  # the import path for other releases


def test_key_mismatch_is_raised_with_key_names_and_leaves_the_model_untouched():
    source, target = _small(out_channels=3), _small(out_channels=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = dict(source.state_dict())
    del state["convInit.conv.weight"]
    state["extra_head.weight"] = torch.zeros(3)
    with pytest.raises(KeyMismatchError) as err:
        load_weights(target, state)
    message = str(err.value)
    assert "convInit.conv.weight" in message  # missing
    assert "extra_head.weight" in message  # unexpected
    assert "conv_final.2.conv.weight (3, 8, 1, 1, 1) vs model (2, 8, 1, 1, 1)" in message  # shape
    assert err.value.missing == ["convInit.conv.weight"] and err.value.unexpected == ["extra_head.weight"]
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())

    report = load_weights(
        target, state, allow_missing=("convInit.*", "conv_final.*"), allow_unexpected=("extra_head.*",)
    )
    assert report.missing == ["convInit.conv.weight"] and report.unexpected == ["extra_head.weight"]
    assert [k for k, _, _ in report.shape_mismatched] == ["conv_final.2.conv.weight", "conv_final.2.conv.bias"]
    assert set(report.skipped) == {"convInit.conv.weight", "extra_head.weight", "conv_final.2.conv.weight", "conv_final.2.conv.bias"}
    loaded = target.state_dict()
    assert torch.equal(loaded["down_layers.1.0.conv.weight"], source.state_dict()["down_layers.1.0.conv.weight"])
    assert torch.equal(loaded["convInit.conv.weight"], before["convInit.conv.weight"])  # kept its init
    assert "missing (1)" in report.summary()


def test_wrapper_prefixes_are_stripped():
    source, target = _small(), _small()
    for wrap in ("module.", "_orig_mod.", "module._orig_mod."):
        state = {wrap + k: v for k, v in source.state_dict().items()}
        report = load_weights(target, state)
        assert not report.skipped and report.notes
        x = torch.randn(1, 2, 16, 16, 16)
        with torch.no_grad():
            assert torch.equal(target(x), source(x))


def test_bare_swin_encoder_release_keys_are_mapped_to_swinvit():
    """The Swin UNETR / BrainSegFounder encoder release stores 'module.layers1...' without 'swinViT.'."""
    source = create_model("swinunetr", in_channels=1, feature_size=12)
    target = create_model("swinunetr", in_channels=1, feature_size=12)
    release = {"module." + k[len("swinViT.") :]: v for k, v in source.state_dict().items() if k.startswith("swinViT.")}
    report = load_weights(target, release, allow_missing=("encoder*", "decoder*", "out.*"))
    assert any("swinViT." in n for n in report.notes)
    assert sorted(report.loaded) == sorted(k for k in source.state_dict() if k.startswith("swinViT."))
    assert all(torch.equal(target.state_dict()[k], source.state_dict()[k]) for k in report.loaded)
    snake = {k.replace("swinViT.", "swin_vit.", 1): v for k, v in source.state_dict().items()}
    assert list(normalize_state_dict(snake, source.state_dict().keys())[0]) == list(source.state_dict())
    with pytest.raises(KeyMismatchError, match="encoder1.layer.conv1.conv.weight"):
        load_weights(target, release)  # decoder keys absent: never silent


def test_transfer_input_channels_two_to_four():
    weight = torch.randn(8, 2, 3, 3, 3)  # stage 1 input order: flair, t1
    flair, t1 = weight[:, 0], weight[:, 1]
    out = transfer_input_channels(weight, ["flair", "t1"], ["flair", "t1ce", "t1", "t2"])  # BraTS order
    assert out.shape == (8, 4, 3, 3, 3)
    scale = 2 / 4
    assert torch.allclose(out[:, 0], flair * scale)
    assert torch.allclose(out[:, 1], t1 * scale)  # t1ce <- t1
    assert torch.allclose(out[:, 2], t1 * scale)
    assert torch.allclose(out[:, 3], flair * scale)  # t2 <- flair
    # The response to a unit input in every channel keeps its magnitude (here exactly).
    assert torch.allclose(out.sum(dim=1), weight.sum(dim=1), atol=1e-6)
    # Aliases, and a pure reordering is a permutation (scale 1).
    assert torch.equal(transfer_input_channels(weight, ["T2-FLAIR", "T1w"], ["t1", "flair"]), weight.flip(1))
    # No relative known: the mean source filter, rescaled.
    odd = transfer_input_channels(weight, ["flair", "t1"], ["flair", "dwi", "adc"])
    assert torch.allclose(odd[:, 1], weight.mean(dim=1) * 2 / 3)
    assert torch.allclose(odd[:, 0], flair * 2 / 3)
    with pytest.raises(ValueError, match="does not have 3 input channels"):
        transfer_input_channels(weight, ["t1", "t2", "flair"], ["t1"])
    with pytest.raises(ValueError, match="unique"):
        transfer_input_channels(weight, ["t1", "T1w"], ["t1"])


def test_build_from_checkpoint_with_other_modalities(tmp_path):
    net = _small(in_channels=2)
    path = save_checkpoint(
        tmp_path / "stage1.pt", model_config=net.config, state_dict=net.state_dict(), extra={"modalities": ["t1", "flair"]}
    )
    torch.manual_seed(123)  # the rebuilt network's own init differs from the checkpoint
    net4, report = build_from_checkpoint(path, modalities=["flair", "t1ce", "t1", "t2"])
    assert net4.in_channels == 4 and net4.config["in_channels"] == 4
    assert report.transferred == ["convInit.conv.weight"] and not report.missing and not report.unexpected
    src, dst = net.state_dict(), net4.state_dict()
    expected = transfer_input_channels(src["convInit.conv.weight"], ["t1", "flair"], ["flair", "t1ce", "t1", "t2"])
    assert torch.equal(dst["convInit.conv.weight"], expected)
    assert all(torch.equal(dst[k], src[k]) for k in src if k != "convInit.conv.weight")
    with torch.no_grad():
        assert net4(torch.randn(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)

    # Same contrasts: a plain, exact load.
    same, report = build_from_checkpoint(path, modalities=["T1w", "FLAIR"])
    assert not report.transferred and all(torch.equal(same.state_dict()[k], v) for k, v in src.items())
    # Encoder only: the decoder keeps its fresh init and the report says so.
    enc, report = build_from_checkpoint(path, encoder_only=True)
    assert report.missing and all(k.startswith(("up_", "conv_final")) for k in report.missing)
    assert sorted(report.missing) == sorted(report.dropped)
    assert all(torch.equal(enc.state_dict()[k], src[k]) for k in report.loaded)
    assert not torch.equal(enc.state_dict()["conv_final.2.conv.weight"], src["conv_final.2.conv.weight"])
    with pytest.raises(ValueError, match="contradicts"):
        build_from_checkpoint(path, in_channels=3, modalities=["t1", "t2"])


def test_build_from_checkpoint_swinunetr_transfers_every_input_layer(tmp_path):
    net = create_model("swinunetr", in_channels=2, out_channels=3, feature_size=12)
    path = save_checkpoint(
        tmp_path / "swin.pt", model_config=net.config, state_dict=net.state_dict(), extra={"modalities": ["t1", "flair"]}
    )
    net4, report = build_from_checkpoint(path, modalities=["flair", "t1ce", "t1", "t2"])
    assert report.transferred == list(net.input_conv_keys)
    for key in net.input_conv_keys:
        expected = transfer_input_channels(net.state_dict()[key], ["t1", "flair"], ["flair", "t1ce", "t1", "t2"])
        assert torch.equal(net4.state_dict()[key], expected), key
    # Without contrast names, a new channel count starts every channel from the mean filter.
    plain = save_checkpoint(tmp_path / "plain.pt", model_config=net.config, state_dict=net.state_dict())
    net1, report = build_from_checkpoint(plain, in_channels=1)
    w = net.state_dict()["swinViT.patch_embed.proj.weight"]
    assert torch.allclose(net1.state_dict()["swinViT.patch_embed.proj.weight"][:, 0], w.mean(dim=1) * 2)
    assert any("names unknown" in n for n in report.notes)
