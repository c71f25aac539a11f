"""kit.models backbones and heads: real MONAI networks on small CPU inputs."""

from __future__ import annotations

import io

import pytest
import torch

from kit.models import (
    ClassificationHead,
    SSLHead,
    create_model,
    list_models,
    register_model,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_lists_both_backbones_and_rejects_unknown_and_duplicates():
    assert {"swinunetr", "segresnet_small"} <= set(list_models())
    with pytest.raises(KeyError, match="segresnet_small"):
        create_model("no_such_net", in_channels=1)
    with pytest.raises(ValueError, match="already registered"):
        register_model("swinunetr")(lambda **kw: None)


def test_segresnet_small_forward_and_encode_shapes():
    net = create_model("segresnet_small", in_channels=2, out_channels=3)
    assert (net.feature_dim, net.downsample, net.in_channels, net.out_channels) == (64, 8, 2, 3)
    x = torch.randn(2, 2, 32, 32, 32)
    with torch.no_grad():
        assert net(x).shape == (2, 3, 32, 32, 32)
        assert net.encode(x).shape == (2, 64, 4, 4, 4)
    # Non-cubic input: every side scales by 1/downsample.
    with torch.no_grad():
        assert net.encode(torch.randn(1, 2, 16, 24, 32)).shape == (1, 64, 2, 3, 4)
    wide = create_model("segresnet_small", in_channels=1, init_filters=16, blocks_down=(1, 2, 2), blocks_up=(1, 1))
    assert (wide.feature_dim, wide.downsample) == (64, 4)


def test_swinunetr_forward_and_encode_shapes():
    net = create_model("swinunetr", in_channels=2, out_channels=3, feature_size=12)
    assert (net.feature_dim, net.downsample, net.min_input_size) == (192, 32, 64)
    x = torch.randn(1, 2, 64, 64, 64)
    seen = []
    hook = net.swinViT.register_forward_hook(lambda module, args, out: seen.append(out[4]))
    with torch.no_grad():
        features = net.encode(x)
        logits = net(x)
    hook.remove()
    assert features.shape == (1, 16 * 12, 2, 2, 2)
    assert logits.shape == (1, 3, 64, 64, 64)
    # encode is the deepest Swin stage of MONAI's own segmentation forward path.
    assert torch.equal(features, seen[1])


def test_swinunetr_default_is_the_paper_backbone_and_img_size_is_refused():
    net = create_model("swinunetr", in_channels=4)
    assert net.config["feature_size"] == 48 and net.feature_dim == 768
    n_params = sum(p.numel() for p in net.parameters())
    assert abs(n_params / 1e6 - 62.2) < 0.5, n_params  # 62.2M with depths (2,2,2,2), as published (Tang et al., CVPR 2022)
    with pytest.raises(TypeError, match="img_size"):
        create_model("swinunetr", in_channels=1, img_size=(96, 96, 96))


@pytest.mark.parametrize(
    "name,cfg",
    [("segresnet_small", {"init_filters": 8}), ("swinunetr", {"feature_size": 12, "depths": [2, 2, 2, 2]})],
)
def test_config_rebuilds_the_same_network(name, cfg):
    net = create_model(name, in_channels=3, out_channels=2, **cfg)
    # The config is plain data: it survives the safe checkpoint loader.
    buffer = io.BytesIO()
    torch.save(net.config, buffer)
    buffer.seek(0)
    config = torch.load(buffer, weights_only=True)
    assert config == net.config and config["name"] == name
    rebuilt = create_model(**config)
    assert type(rebuilt) is type(net) and rebuilt.config == net.config
    a, b = net.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    rebuilt.load_state_dict(a)
    if name == "segresnet_small":
        x = torch.randn(1, 3, 16, 16, 16)
        with torch.no_grad():
            assert torch.equal(net(x), rebuilt(x))


def test_encoder_prefixes_cover_exactly_the_encode_path():
    net = create_model("segresnet_small", in_channels=1)
    net.encode(torch.randn(1, 1, 16, 16, 16)).sum().backward()
    for name, param in net.named_parameters():
        in_encoder = name.startswith(net.encoder_prefixes)
        assert (param.grad is not None) == in_encoder, name


@pytest.mark.parametrize("name,cfg", [("segresnet_small", {}), ("swinunetr", {"feature_size": 12})])
def test_input_conv_keys_are_the_layers_reading_the_input(name, cfg):
    net = create_model(name, in_channels=3, **cfg)
    state = net.state_dict()
    assert net.first_conv_key == net.input_conv_keys[0]
    for key in net.input_conv_keys:
        assert state[key].ndim == 5 and state[key].shape[1] == 3, key
    assert net.first_conv_key.startswith(net.encoder_prefixes)


def test_bad_input_sizes_raise_clear_errors():
    seg = create_model("segresnet_small", in_channels=2)
    with pytest.raises(ValueError, match=r"multiple of 8"):
        seg(torch.zeros(1, 2, 30, 32, 32))
    with pytest.raises(ValueError, match=r"expected 2 input channels, got 1"):
        seg.encode(torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match=r"5D batch"):
        seg(torch.zeros(2, 32, 32, 32))
    with pytest.raises(ValueError, match=r"at least 16"):
        seg.check_input(torch.zeros(1, 2, 8, 16, 16))
    swin = create_model("swinunetr", in_channels=1, feature_size=12)
    with pytest.raises(ValueError, match=r"swinunetr: spatial size \(48, 64, 64\) must be a multiple of 32"):
        swin.encode(torch.zeros(1, 1, 48, 64, 64))
    with pytest.raises(ValueError, match=r"at least 64"):
        swin(torch.zeros(1, 1, 32, 32, 32))


@pytest.mark.parametrize("downsample,size", [(8, 32), (32, 64)])
def test_ssl_head_shapes(downsample, size):
    head = SSLHead(feature_dim=96, in_channels=2, downsample=downsample)
    features = torch.randn(2, 96, size // downsample, size // downsample, size // downsample)
    out = head(features)
    assert out["rot_logits"].shape == (2, 4)
    assert out["contrast"].shape == (2, 512)
    assert out["recon"].shape == (2, 2, size, size, size)
    deconv = SSLHead(feature_dim=96, in_channels=2, downsample=downsample, upsample="deconv")
    assert deconv.reconstruct(features).shape == (2, 2, size, size, size)
    with pytest.raises(ValueError, match="power of 2"):
        SSLHead(96, 1, downsample=12)


def test_ssl_head_reference_channel_schedule():
    head = SSLHead(768, in_channels=1, downsample=32)
    widths = [m.out_channels for m in head.decoder if isinstance(m, torch.nn.Conv3d)]
    assert widths == [384, 192, 96, 48, 48, 1]  # Swin UNETR pretraining "vae" decoder
    assert head.rotation_head.out_features == 4 and head.contrastive_head.out_features == 512


def test_classification_head():
    head = ClassificationHead(64, n_classes=3, dropout=0.2)
    features = torch.randn(4, 64, 2, 2, 2)
    assert head(features).shape == (4, 3)
    head.eval()
    assert torch.allclose(head(features), head(features.mean(dim=(2, 3, 4))))
    with pytest.raises(ValueError, match="dropout"):
        ClassificationHead(64, 2, dropout=1.5)
