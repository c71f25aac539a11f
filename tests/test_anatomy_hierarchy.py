"""anatomy_hierarchy: which crops pair, the coarse-to-fine schedule, the teacher and queue, which negatives are pruned."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kit.models import create_model
from kit.ssl import create_objective, list_objectives
from kit.ssl.anatomy_hierarchy import hierarchy_views, level_boundaries, pruned_info_nce


def _obj(**cfg):
    torch.manual_seed(0)
    return create_objective("anatomy_hierarchy", create_model("segresnet_small", 1), **{"queue_size": 16, **cfg})


def test_registered():
    assert "anatomy_hierarchy" in list_objectives()


@pytest.mark.parametrize("grid", [1, 2, 4])
def test_both_views_are_crops_of_the_same_grid_cell(grid):
    x = torch.rand(40, 1, 32, 32, 32)
    out = hierarchy_views(x, list(range(40)), grid, view_size=(16, 16, 16))
    side = 32 // grid
    for i, cell in enumerate(out["cells"]):
        assert all(cell[2 * a + 1] - cell[2 * a] == side and cell[2 * a] % side == 0 for a in range(3))
        for box in (out["crops"][i], out["crops"][40 + i]):  # view 1 and view 2 of sample i
            for a in range(3):
                assert cell[2 * a] <= box[2 * a] < box[2 * a + 1] <= cell[2 * a + 1]
                assert box[2 * a + 1] - box[2 * a] >= min(side, max(2, math.floor(0.6 * side)))
    assert out["views"].shape == (80, 1, 16, 16, 16)
    assert len(set(out["cells"])) == min(40, grid**3) if grid < 4 else len(set(out["cells"])) > 20  # cells vary by seed
    assert out["crops"][:40] != out["crops"][40:]  # the two views are different crops


def test_views_are_the_resized_crops_and_depend_only_on_the_seed():
    x = torch.rand(3, 2, 16, 16, 16)
    out = hierarchy_views(x, [1, 2, 3], 2, flip=False)
    for n, (x0, x1, y0, y1, z0, z1) in enumerate(out["crops"]):
        i = n % 3
        expected = F.interpolate(x[i:i + 1, :, x0:x1, y0:y1, z0:z1], size=(16, 16, 16), mode="trilinear", align_corners=False)
        assert torch.allclose(out["views"][n], expected[0])
    alone = hierarchy_views(x[1:2], [2], 2, flip=False)
    assert alone["cells"][0] == out["cells"][1] and torch.equal(alone["views"][1], out["views"][4])
    whole = hierarchy_views(x, [1, 2, 3], 1, crop_scale=(1.0, 1.0), flip=False)
    assert torch.allclose(whole["views"], torch.cat([x, x]), atol=1e-6)  # grid 1, full crop: the input itself


def test_coarse_to_fine_schedule_follows_the_loop_steps():
    assert level_boundaries(3, total_steps=90) == (30, 60)
    obj = _obj(total_steps=90)
    x = torch.rand(2, 1, 32, 32, 32)
    seen = {}
    for step in (0, 29, 30, 59, 60, 89):
        obj.on_step_end(step)
        seen[step] = obj.grid_size
        cells = obj.views(x, torch.tensor([1, 2]))["cells"]
        assert all(c[1] - c[0] == 32 // obj.grid_size for c in cells)
    assert seen == {0: 1, 29: 1, 30: 2, 59: 2, 60: 4, 89: 4}  # whole crop, then 2^3, then 4^3 cells
    extra = obj.checkpoint_extra()
    assert extra["ssl_progress"] == {"step": 89, "teacher_synced": False} and "step" not in extra["ssl_state"]
    resumed = _obj(total_steps=90)
    resumed.load_checkpoint_extra(extra)
    assert resumed.grid_size == 4  # a resumed run continues at the right level
    assert _obj(level_steps=(5, 7)).grid_for_step(6) == 2
    with pytest.raises(ValueError, match="level_steps"):
        _obj(level_steps=(7, 5))


def test_negatives_at_or_above_0_8_are_pruned_from_the_denominator():
    q = F.normalize(torch.tensor([[1.0, 0.0, 0.0]]), dim=1)
    k = F.normalize(torch.tensor([[0.9, 0.1, 0.0]]), dim=1)
    cosines = [0.95, 0.8, 0.79, 0.2, -0.5]
    queue = torch.tensor([[c, math.sqrt(1 - c * c), 0.0] for c in cosines])
    loss, pruned = pruned_info_nce(q, k, queue, temperature=0.2, threshold=0.8)
    assert pruned[0].tolist() == [True, True, False, False, False]
    pos = float(q @ k.t())
    kept = [c for c in cosines if c < 0.8]
    manual = -pos / 0.2 + math.log(math.exp(pos / 0.2) + sum(math.exp(c / 0.2) for c in kept))
    assert abs(loss.item() - manual) < 1e-5
    # the positive is never pruned, whatever its similarity; without pruning every negative counts
    same, _ = pruned_info_nce(q, q, queue, 0.2, 0.8)
    full, none_pruned = pruned_info_nce(q, k, queue, 0.2, None)
    assert same.item() > 0 and not none_pruned.any() and full.item() > loss.item()


def test_teacher_is_synced_then_a_momentum_average_and_the_queue_holds_its_keys():
    obj = _obj(momentum=0.5, queue_size=10, total_steps=10)
    x, seeds = torch.rand(2, 1, 16, 16, 16), torch.tensor([3, 4])
    name = "convInit.conv.weight"
    with torch.no_grad():
        obj.model.state_dict()[name].add_(1.0)  # e.g. weights loaded from an earlier stage
    assert not torch.equal(obj.teacher.state_dict()[name], obj.model.state_dict()[name])
    queue0 = obj.queue.clone()
    obj(x, seeds)  # first training forward: sync, then enqueue 2 views x 2 samples
    assert torch.equal(obj.teacher.state_dict()[name], obj.model.state_dict()[name])
    with torch.no_grad():
        views = obj.views(x, seeds)["views"]
        keys = F.normalize(obj.teacher_projector(obj.teacher.encode(views).mean(dim=(2, 3, 4))), dim=1)
    assert int(obj.queue_ptr) == 4 and torch.allclose(obj.queue[:4], keys, atol=1e-6)
    assert torch.equal(obj.queue[4:], queue0[4:])
    obj.eval()
    obj(x, seeds)  # evaluation does not enqueue
    assert int(obj.queue_ptr) == 4
    obj.train()
    for _ in range(3):  # wraps around the queue
        obj(x, seeds)
    assert int(obj.queue_ptr) == 16 % 10
    teacher_before = obj.teacher.state_dict()[name].clone()
    with torch.no_grad():
        obj.model.state_dict()[name].add_(2.0)
    obj.on_step_end(1)
    expected = 0.5 * teacher_before + 0.5 * obj.model.state_dict()[name]
    assert torch.allclose(obj.teacher.state_dict()[name], expected)
    assert int(obj.step) == 1
    assert not any(p.requires_grad for p in obj.teacher.parameters())


def test_a_later_stage_starts_its_own_schedule_and_resyncs_its_teacher(tmp_path):
    from kit.models import save_checkpoint
    from kit.train.loop import _initialise_from

    stage1 = _obj(total_steps=10)
    stage1(torch.rand(2, 1, 16, 16, 16), torch.tensor([1, 2]))
    stage1.on_step_end(9)
    path = tmp_path / "stage1.pt"
    save_checkpoint(path, model_config=dict(stage1.model.config), state_dict=stage1.model.state_dict(),
                    extra={**stage1.checkpoint_extra(), "modalities": ["t1"]})
    torch.manual_seed(1)
    stage2 = create_objective("anatomy_hierarchy", create_model("segresnet_small", 2), queue_size=16, total_steps=10)
    _initialise_from(stage2, path, ["t1", "flair"])
    assert int(stage2.step) == 0 and stage2.grid_size == 1 and not bool(stage2.teacher_synced)
    stage2(torch.rand(2, 2, 16, 16, 16), torch.tensor([1, 2]))
    name = "convInit.conv.weight"  # 2 input channels now: the teacher follows the transferred student
    assert torch.equal(stage2.teacher.state_dict()[name], stage2.model.state_dict()[name])


def test_declares_whole_brain_inputs_and_its_grids_are_sensible_at_a_32_cube_brain():
    from kit.ssl.base import objective_class

    assert objective_class("anatomy_hierarchy").input_mode == "brain"  # pretraining feeds whole aligned brains
    assert getattr(objective_class("mim"), "input_mode", "crop") == "crop"  # the others keep random crops
    brains = torch.rand(4, 2, 32, 32, 32)
    seeds = list(range(4))
    for grid, side in [(1, 32), (2, 16), (4, 8)]:
        out = hierarchy_views(brains, seeds, grid)
        assert out["views"].shape == (8, 2, 32, 32, 32)  # default view_size: the input cube
        for cell, box in zip(out["cells"] * 2, out["crops"]):
            # cells sit at fixed positions of the brain cube, the same anatomy in every aligned brain
            assert all(cell[2 * a] % side == 0 and cell[2 * a + 1] - cell[2 * a] == side for a in range(3))
            assert all(max(2, round(0.6 * side)) <= box[2 * a + 1] - box[2 * a] <= side for a in range(3))
    # the cells of a seed do not depend on the brain's content
    assert hierarchy_views(brains * 0 + 1, seeds, 4)["cells"] == hierarchy_views(brains, seeds, 4)["cells"]
    with pytest.raises(ValueError, match=r"16\^3 grid on an input of \(32, 32, 32\) voxels gives cells under 4 voxels"):
        hierarchy_views(brains, seeds, 16)
    obj = _obj(total_steps=30)
    obj.on_step_end(25)  # the finest level: 4^3 cells of 8 voxels
    assert obj.grid_size == 4 and sorted(obj(torch.rand(2, 1, 32, 32, 32), torch.tensor([1, 2]))) == ["contrast", "loss"]


def test_pruning_cannot_make_collapse_a_minimum():
    """Every embedding equal: without a cap all negatives are pruned and the loss is 0 with no gradient (what a
    run on aligned whole brains fell into); with the default cap half the queue stays and pushes apart."""
    from kit.ssl.anatomy_hierarchy import pruned_info_nce

    q = torch.nn.functional.normalize(torch.ones(4, 8), dim=1).requires_grad_(True)
    queue = torch.nn.functional.normalize(torch.ones(16, 8) + 1e-3 * torch.randn(16, 8), dim=1)
    uncapped, pruned_all = pruned_info_nce(q, q.detach(), queue, 0.2, 0.8, max_pruned=None)
    assert float(uncapped) == 0.0 and bool(pruned_all.all())
    capped, pruned = pruned_info_nce(q, q.detach(), queue, 0.2, 0.8)
    assert float(capped) > 1.0 and pruned.sum(1).tolist() == [8] * 4
    capped.backward()
    assert float(q.grad.abs().sum()) > 0
