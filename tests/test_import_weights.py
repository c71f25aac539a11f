"""kit import-weights: MONAI's published SSL layout and BrainSegFounder's, built here from MONAI's networks."""

from __future__ import annotations

import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from kit.cli import main
from kit.models import create_model, load_checkpoint, save_checkpoint
from kit.models.checkpoints import CheckpointError
from kit.models.imports import import_weights
from kit.finetune import FinetuneConfig, build_finetune_model

PATCH = "swinViT.patch_embed.proj.weight"


def monai_ssl_file(path, feature_size: int) -> dict[str, torch.Tensor]:
    """``model_swinvit.pt`` as published: {'state_dict': 'module.' + Swin encoder keys, mlp.fc1/fc2}; 1 channel.

    Returns the encoder's weights in MONAI SwinUNETR's own spelling (``swinViT.*``) for comparison.
    """
    torch.manual_seed(1)
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=feature_size)
    encoder = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("swinViT.")}
    published = {"module." + k[len("swinViT."):].replace(".mlp.linear", ".mlp.fc"): v for k, v in encoder.items()}
    torch.save({"epoch": 100, "state_dict": published}, path)
    # The layout is the one MONAI's own loader for these weights reads, key for key.
    reader = SwinUNETR(in_channels=1, out_channels=14, feature_size=feature_size)
    reader.load_from(torch.load(path, weights_only=True))
    assert all(torch.equal(reader.state_dict()[k], v) for k, v in encoder.items())
    return encoder


class BrainSegFounderSSLHead(nn.Module):
    """The module BrainSegFounder pretrains (pretrain/models/ssl_head.py): MONAI's SwinTransformer + SSL heads."""

    def __init__(self, in_channels: int, feature_size: int) -> None:
        super().__init__()
        dim = 16 * feature_size
        self.swinViT = SwinTransformer(
            in_chans=in_channels, embed_dim=feature_size, window_size=(7, 7, 7), patch_size=(2, 2, 2),
            depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), spatial_dims=3,
        )
        self.rotation_pre, self.rotation_head = nn.Identity(), nn.Linear(dim, 4)
        self.contrastive_pre, self.contrastive_head = nn.Identity(), nn.Linear(dim, 512)
        self.conv = nn.Sequential(nn.Conv3d(dim, dim // 2, 3, padding=1), nn.InstanceNorm3d(dim // 2))


def test_monai_ssl_weights_at_feature_size_48_carry_every_encoder_tensor(tmp_path, capsys):
    src, out = tmp_path / "model_swinvit.pt", tmp_path / "swin48_4ch.pt"
    encoder = monai_ssl_file(src, feature_size=48)
    code = main(["import-weights", "--format", "monai-ssl", "--src", str(src), "--in-channels", "4", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"matched: {len(encoder)} tensors ({len(encoder)} of the Swin encoder)" in printed.out
    assert "missing:" in printed.out and "unexpected: 0" in printed.out
    assert "transferred: swinViT.patch_embed.proj.weight (48, 1, 2, 2, 2) -> (48, 4, 2, 2, 2)" in printed.out

    ckpt = load_checkpoint(out)
    assert ckpt["model_config"]["feature_size"] == 48 and ckpt["model_config"]["in_channels"] == 4
    assert ckpt["extra"]["modalities"] == ["flair", "t1ce", "t1", "t2"]
    state = ckpt["state_dict"]
    for key, value in encoder.items():
        if key == PATCH:
            assert state[key].shape == (48, 4, 2, 2, 2)
            torch.testing.assert_close(state[key].sum(dim=1, keepdim=True), value, rtol=0, atol=1e-6)
        else:
            assert torch.equal(state[key], value), key

    # Existing files are never overwritten; the error is one line naming the file.
    assert main(["import-weights", "--format", "monai-ssl", "--src", str(src), "--in-channels", "4", "--out", str(out)]) == 1
    assert f"{out} exists" in capsys.readouterr().err


def test_brainsegfounder_checkpoint_is_an_init_for_fine_tuning(tmp_path, capsys):
    torch.manual_seed(2)
    head = BrainSegFounderSSLHead(in_channels=2, feature_size=12)
    src = tmp_path / "model_bestValRMSE.pt"
    # DDP-wrapped SSLHead as pretrain/main.py saves it: 'module.swinViT.*' plus the SSL heads.
    state = {"module." + k: v for k, v in head.state_dict().items()}
    torch.save({"global_step": 10, "epoch": 1, "state_dict": state, "optimizer": {}}, src)
    out = tmp_path / "bsf_4ch.pt"
    report = import_weights("brainsegfounder", src, 4, out)
    print(report.summary())
    encoder = {"swinViT." + k: v for k, v in head.swinViT.state_dict().items()}
    assert sorted(k for k in report.matched) == sorted(encoder)
    assert sorted(report.unexpected) == sorted(k[len("module."):] for k in state if not k.startswith("module.swinViT."))
    assert report.src_modalities == ["t1", "flair"]  # UK Biobank stage 1: T1, T2-FLAIR

    written = load_checkpoint(out)["state_dict"]
    for key, value in encoder.items():
        if key != PATCH:
            assert torch.equal(written[key], value), key
    t1, flair = encoder[PATCH][:, 0], encoder[PATCH][:, 1]
    patch = written[PATCH]  # flair <- flair, t1ce <- t1, t1 <- t1, t2 <- flair, times 2/4
    for channel, source in enumerate([flair, t1, t1, flair]):
        torch.testing.assert_close(patch[:, channel], source / 2)
    torch.testing.assert_close(patch.sum(dim=1), encoder[PATCH].sum(dim=1))

    # The imported checkpoint is a fine-tuning init like a stage checkpoint.
    config = FinetuneConfig(task="segmentation", backbone="swinunetr", model={"feature_size": 12}, init=str(out),
                            transfer="encoder", crop=64, input_size=64)
    model, load_report = build_finetune_model(config, in_channels=4, modalities=["flair", "t1ce", "t1", "t2"])
    assert not load_report.missing and not load_report.shape_mismatched
    assert all(torch.equal(model.state_dict()[k], written[k]) for k in encoder)


def test_an_incomplete_encoder_is_refused_naming_the_file(tmp_path, capsys):
    torch.manual_seed(3)
    head = BrainSegFounderSSLHead(in_channels=2, feature_size=12)
    state = {"module." + k: v for k, v in head.state_dict().items() if ".layers4." not in k}
    src = tmp_path / "truncated.pt"
    torch.save({"state_dict": state}, src)
    assert main(["import-weights", "--format", "brainsegfounder", "--src", str(src), "--in-channels", "4",
                 "--out", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and "layers4" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()
    try:
        import_weights("brainsegfounder", src, 4, tmp_path / "x.pt")
    except CheckpointError:
        pass
    else:  # pragma: no cover
        raise AssertionError("an incomplete encoder was accepted")


def test_reproduce_init_reaches_notebook_04_only(tmp_path, monkeypatch, capsys):
    import kit.pipeline

    calls = {}
    monkeypatch.setattr(kit.pipeline, "run_notebook",
                        lambda notebook, output, parameters, *a, **k: calls.setdefault(notebook.name, parameters))
    ckpt = tmp_path / "imported.pt"
    net = create_model("segresnet_small", in_channels=4, init_filters=8)
    save_checkpoint(ckpt, model_config=net.config, state_dict=net.state_dict(), extra={})  # --init must be a kit checkpoint
    run = tmp_path / "run"
    (run / "02_stage1").mkdir(parents=True)
    assert main(["reproduce", "--out", str(run), "--from", "03", "--quiet", "--init", f"monai_ssl={ckpt}"]) == 0
    assert calls["04_finetune.ipynb"]["extra_inits"] == {"monai_ssl": str(ckpt.resolve())}
    assert all("extra_inits" not in p for name, p in calls.items() if name != "04_finetune.ipynb")
    assert main(["reproduce", "--out", str(run), "--from", "03", "--init", "x=missing.pt"]) == 1
    assert "--init x: missing.pt does not exist" in capsys.readouterr().err


def _digest(folder) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_wrong_inputs_get_one_line_naming_the_argument_or_file_and_change_nothing(tmp_path, capsys):
    from kit.models import create_model, save_checkpoint

    inputs, outs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir(), outs.mkdir()
    torch.manual_seed(0)
    bsf = inputs / "bsf.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in BrainSegFounderSSLHead(2, 12).state_dict().items()}}, bsf)
    odd = inputs / "odd_width.pt"  # a Swin encoder of embedding width 18: builds in MONAI, but no SwinUNETR
    narrow = SwinTransformer(in_chans=1, embed_dim=18, window_size=(7, 7, 7), patch_size=(2, 2, 2), depths=(2, 2, 2, 2),
                             num_heads=(3, 6, 12, 24), spatial_dims=3)
    torch.save({"state_dict": {"module." + k.replace(".mlp.linear", ".mlp.fc"): v
                               for k, v in narrow.state_dict().items()}}, odd)
    net = create_model("swinunetr", in_channels=2, feature_size=12)
    kit_file = save_checkpoint(inputs / "kit.pt", model_config=net.config, state_dict=net.state_dict(),
                               extra={"modalities": ["t1", "flair"]})
    monai = inputs / "model_swinvit.pt"
    monai_ssl_file(monai, feature_size=12)
    (outs / "taken.pt").write_bytes(b"keep me")
    before_in, before_out = _digest(inputs), _digest(outs)

    def run(*args):
        return main(["import-weights", *args])

    cases = [
        (["--format", "brainsegfounder", "--src", str(bsf), "--in-channels", "0", "--out", str(outs / "a.pt")],
         "--in-channels must be a positive number of input contrasts, got 0"),
        (["--format", "brainsegfounder", "--src", str(bsf), "--in-channels", "-2", "--out", str(outs / "a.pt")],
         "--in-channels"),
        (["--format", "monai-ssl", "--src", str(inputs), "--in-channels", "4", "--out", str(outs / "a.pt")],
         f"--src {inputs} is a folder, not a checkpoint file"),
        (["--format", "monai-ssl", "--src", str(bsf), "--in-channels", "4", "--out", str(outs / "a.pt")],
         f"{bsf}: is BrainSegFounder"),
        (["--format", "brainsegfounder", "--src", str(monai), "--in-channels", "4", "--out", str(outs / "a.pt")],
         "not the --format brainsegfounder layout"),
        (["--format", "brainsegfounder", "--src", str(kit_file), "--in-channels", "4", "--out", str(outs / "a.pt")],
         "is kit checkpoint"),
        (["--format", "monai-ssl", "--src", str(odd), "--in-channels", "4", "--out", str(outs / "a.pt")],
         f"{odd}: its Swin embedding width"),
        (["--format", "brainsegfounder", "--src", str(bsf), "--in-channels", "4", "--modalities", "t1", "t2",
          "--out", str(outs / "a.pt")], "--modalities: 2 names"),
        (["--format", "brainsegfounder", "--src", str(bsf), "--in-channels", "2", "--modalities", "t1", "T1w",
          "--out", str(outs / "a.pt")], "--modalities: names must be distinct"),
        (["--format", "brainsegfounder", "--src", str(bsf), "--in-channels", "4", "--src-modalities", "t1",
          "--out", str(outs / "a.pt")], "--src-modalities: 1 names"),
        (["--format", "brainsegfounder", "--src", str(bsf), "--in-channels", "3", "--out", str(outs / "a.pt")],
         "--modalities: no default contrast names for --in-channels 3"),
        (["--format", "brainsegfounder", "--src", str(bsf), "--in-channels", "4", "--out", str(outs / "taken.pt")],
         "taken.pt exists"),
        (["--format", "brainsegfounder", "--src", str(inputs / "nope.pt"), "--in-channels", "4",
          "--out", str(outs / "a.pt")], "nope.pt does not exist"),
    ]
    for args, expected in cases:
        assert run(*args) == 1, args
        printed = capsys.readouterr()
        lines = printed.err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("kit import-weights: "), (args, printed.err)
        print(f"| {' '.join(a for a in args if '/' not in a)} | {lines[0]} |")
        assert _digest(inputs) == before_in and _digest(outs) == before_out, args
        assert sorted(p.name for p in outs.iterdir()) == ["taken.pt"], args


def test_axis_order_check_finds_the_orientation_tiny_weights_were_trained_in(tmp_path):
    """A tiny SSLHead trained (rotation task) on brains with x and y swapped prefers that orientation;
    a file without a head says the check could not run."""
    from kit.models.axis_check import IDENTITY, check_axis_order, orient, synthetic_brain

    torch.manual_seed(0)
    head = BrainSegFounderSSLHead(in_channels=1, feature_size=12)
    trained_in = "permute (1, 0, 2)"
    brains = [orient(synthetic_brain(["t1"], size=32, index=i), trained_in) for i in range(2)]
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-3)
    for step in range(60):
        x = brains[step % 2]
        batch = torch.cat([torch.rot90(x, k, dims=(3, 4)) for k in range(4)])
        logits = head.rotation_head(head.swinViT(batch)[4].flatten(2)[:, :, 0])
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(4))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    state = {k: v for k, v in head.state_dict().items() if k.startswith(("swinViT.", "rotation_head."))}
    arch = {"in_channels": 1, "feature_size": 12, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24),
            "patch_merging": "current"}
    found = check_axis_order(state, arch, ["t1"], size=32)
    print(found.summary(), {k: round(v, 3) for k, v in found.scores.items()})
    assert found.preferred == trained_in and not found.ras_ok and "WARNING" in found.summary()
    assert found.scores[trained_in] > found.scores[IDENTITY]

    # Through kit import-weights: the report and the checkpoint carry the finding.
    src = tmp_path / "bsf.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in head.state_dict().items()}}, src)
    report = import_weights("brainsegfounder", src, 1, tmp_path / "k.pt", modalities=["t1"])
    assert report.axis_check is not None and report.axis_check.head == "rotation"
    assert load_checkpoint(tmp_path / "k.pt")["extra"]["imported"]["axis_check"]["head"] == "rotation"
    monai = tmp_path / "model_swinvit.pt"
    monai_ssl_file(monai, feature_size=12)
    report = import_weights("monai-ssl", monai, 1, tmp_path / "m.pt", modalities=["t1"])
    assert "axis order: not checked" in report.summary()
    assert load_checkpoint(tmp_path / "m.pt")["extra"]["imported"]["axis_check"] == "not checked"
