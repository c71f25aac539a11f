"""Tensors on any device: previews, figures and inference take CPU inputs for a model on a GPU.

The GPU is simulated on the CPU by tests/accelerator_shim.py, which raises exactly where CUDA raised
in the notebooks (notebook 02: ``objective.preview(crop, seeds)`` with CPU crops and CUDA weights,
"Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) should be the same";
notebook 03: ``per_channel.numpy()`` on a CUDA tensor).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from accelerator_shim import ACCELERATOR, AcceleratorShim, OnAccelerator, to_accelerator
from kit.models import create_model
from kit.ssl import create_objective
from kit.tensors import module_device, to_module_device, to_numpy
from kit.viz import plot_first_layer, plot_ssl_preview

ROOT = Path(__file__).resolve().parents[1]


def test_the_shim_fails_where_cuda_fails():
    """The stand-in must raise on both bug patterns, or the tests below prove nothing."""
    conv = to_accelerator(torch.nn.Conv3d(2, 3, 3))
    with AcceleratorShim():
        assert module_device(conv) == ACCELERATOR
        with pytest.raises(RuntimeError, match="same device"):
            conv(torch.rand(1, 2, 8, 8, 8))
        out = conv(torch.rand(1, 2, 8, 8, 8).to(ACCELERATOR))
        assert isinstance(out, OnAccelerator)
        with pytest.raises(TypeError, match="numpy"):
            out.detach().numpy()
        with pytest.raises(TypeError, match="numpy"):
            np.asarray(out.detach())
        assert type(out.detach().cpu()) is torch.Tensor


def test_to_numpy_detaches_moves_and_widens_half_precision():
    with AcceleratorShim():
        t = torch.ones(2, 3, requires_grad=True).to(ACCELERATOR) * 2
        assert isinstance(t, OnAccelerator) and t.requires_grad
        out = to_numpy(t)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and (out == 2).all()
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert to_numpy(torch.ones(2, dtype=torch.float16)).dtype == np.float32
    assert to_numpy(torch.arange(3)).dtype == np.int64
    assert to_numpy(torch.zeros(2, dtype=torch.bool)).dtype == np.bool_
    assert type(to_numpy(MetaTensor(torch.zeros(2, 2)))) is np.ndarray
    assert to_numpy([1.0, 2.0]).tolist() == [1.0, 2.0]
    assert to_module_device(torch.zeros(1), torch.nn.Linear(1, 1)).device.type == "cpu"
    assert module_device(torch.nn.ReLU()).type == "cpu"


@pytest.mark.parametrize("name", ["swin_trio", "cross_contrast", "mim", "anatomy_hierarchy", "moco_v3"])
def test_preview_takes_cpu_crops_for_a_model_on_the_accelerator(name):
    """Notebook 02, cell 7: the crops are on the CPU, the trained model is not (every objective)."""
    torch.manual_seed(0)
    if name == "moco_v3":  # 2D slices
        backbone = create_model("resnet18_2d", in_channels=2)
        crop = torch.rand(2, 2, 32, 32, generator=torch.Generator().manual_seed(3))
    else:
        backbone = create_model("segresnet_small", in_channels=2)
        crop = torch.rand(2, 2, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    objective = create_objective(name, backbone)
    seeds = torch.tensor([0, 1])
    on_cpu = objective.preview(crop, seeds)
    to_accelerator(objective)
    with AcceleratorShim():
        on_device = objective.preview(crop, seeds)
        fig = plot_ssl_preview(on_device, title="after training")
    assert len(fig.axes) >= 2 and set(on_device) == set(on_cpu)
    for key, value in on_cpu.items():
        if not isinstance(value, np.ndarray):  # e.g. moco_v3's spatial_dims
            continue
        assert type(on_device[key]) is np.ndarray and on_device[key].dtype == value.dtype, key
        np.testing.assert_allclose(on_device[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_first_layer_figure_from_a_model_on_the_accelerator():
    """Notebook 03, cell 5: per-channel first-layer weights of the model the loop left on the GPU."""
    model = create_model("segresnet_small", in_channels=4)
    expected = model.state_dict()[model.first_conv_key].abs().mean(dim=(0, 2, 3, 4)).numpy()
    to_accelerator(model)
    with AcceleratorShim():
        fig, values = plot_first_layer(model, ["flair", "t1ce", "t1", "t2"])
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["flair", "t1ce", "t1", "t2"]
    with pytest.raises(ValueError, match="4 input channels but 2 modalities"):
        plot_first_layer(create_model("segresnet_small", in_channels=4), ["t1", "flair"])


def test_inference_and_scores_take_cpu_volumes_for_a_model_on_the_accelerator():
    from kit.finetune.evaluate import classification_scores
    from kit.models.inference import predict_volume

    torch.manual_seed(0)
    seg = torch.nn.Conv3d(2, 3, 3, padding=1)
    volume = torch.rand(2, 20, 18, 16)
    expected = predict_volume(seg, volume, roi=16, amp="off")
    to_accelerator(seg)
    with AcceleratorShim():
        probs = predict_volume(seg, volume, roi=16, amp="off")
        assert type(probs) is torch.Tensor  # on the CPU
    torch.testing.assert_close(probs, expected)

    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4 * 4, 3))
    x = torch.rand(2, 2, 4, 4, 4)
    expected = classification_scores(clf, x, amp="off")
    to_accelerator(clf)
    with AcceleratorShim():
        scores = classification_scores(clf, x, amp="off")
    assert isinstance(scores, np.ndarray)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_notebooks_convert_tensors_only_through_to_numpy():
    """``t.numpy()`` in a notebook breaks as soon as ``t`` lives on a GPU; ``kit.tensors.to_numpy`` does not."""
    offenders = []
    for src in sorted((ROOT / "notebooks" / "src").glob("*.py")):
        for number, line in enumerate(src.read_text().splitlines(), 1):
            if re.search(r"\.numpy\(\)", line):
                offenders.append(f"{src.name}:{number}: {line.strip()}")
    assert offenders == []


def test_sliding_window_batch_defaults_to_one_window_on_a_cpu():
    from kit.models.inference import predict_volume

    seen = []

    class Recorder(torch.nn.Conv3d):
        def forward(self, x):
            seen.append(x.shape[0])
            return super().forward(x)

    net = Recorder(1, 2, 1)
    volume = torch.rand(1, 40, 40, 40)
    auto = predict_volume(net, volume, roi=16)
    assert set(seen) == {1}  # CPU figures unchanged: one window per pass, as before
    seen.clear()
    torch.testing.assert_close(predict_volume(net, volume, roi=16, sw_batch_size=4), auto)
    assert max(seen) == 4


def test_saliency_map_takes_a_cpu_image_for_a_classifier_on_the_accelerator():
    from kit.explain import saliency_map

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.rand(1, 1, 12, 12, 12)
    expected = saliency_map(net, x, "vanilla", target=1)
    to_accelerator(net)
    with AcceleratorShim():
        sal = saliency_map(net, x, "vanilla", target=1)
    assert type(sal) is np.ndarray and sal.dtype == np.float32
    np.testing.assert_allclose(sal, expected, rtol=1e-5, atol=1e-7)
