"""Which axis order do imported weights expect? Run their SSL head on a synthetic brain in 9 orientations.

The kit feeds volumes in RAS+ voxel order (``Orientationd("RAS")``). Weights pretrained on volumes
stored in another order (LPS, or axes permuted) still load, but their features see a brain on its
side. Where a weights file holds its self-supervised heads (Swin UNETR / BrainSegFounder ``SSLHead``:
``rotation_head`` on the first token of the deepest Swin map, the ``conv`` reconstruction decoder
of ``upsample='vae'``), the head is a cheap probe: :func:`check_axis_order` scores it on a synthetic
brain (:func:`kit.data.synth.make_subject`) under the 6 axis permutations and 3 single-axis flips
and reports the orientation it does best on. Scores: the rotation head's mean log-likelihood of the
right quarter turn (in the plane of the last two axes, as the Swin UNETR pretraining rotates), else
minus the reconstruction's mean squared error. A left-right flip of a near-symmetric brain scores
about the same as no flip: only a clear margin is reported as a preference.

Example:
    >>> x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> orient(x, "permute (1, 0, 2)")[0, 0, 0, 1, 0].item(), orient(x, "flip x")[0, 0, 0, 0, 0].item()
    (4.0, 4.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ORIENTATIONS", "IDENTITY", "AxisCheck", "orient", "synthetic_brain", "ssl_heads", "check_axis_order"]

IDENTITY = "identity (RAS+)"
_PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
#: The orientations tried: no change, the 5 other axis permutations, a flip of each axis.
ORIENTATIONS = (IDENTITY, *(f"permute {p}" for p in _PERMUTATIONS), "flip x", "flip y", "flip z")
# A preference needs this margin over RAS+: nats of rotation log-likelihood, or a fraction of the MSE.
_ROTATION_MARGIN, _RECONSTRUCTION_MARGIN = 0.1, 0.05


def orient(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` ``(B, C, X, Y, Z)`` in the orientation ``name`` (one of :data:`ORIENTATIONS`).

    Example:
        >>> orient(torch.zeros(1, 1, 2, 3, 4), "permute (2, 0, 1)").shape
        torch.Size([1, 1, 4, 2, 3])
    """
    if name == IDENTITY:
        return x
    if name.startswith("flip "):
        return torch.flip(x, dims=(2 + "xyz".index(name[-1]),))
    perm = tuple(int(v) for v in name[len("permute ("):-1].split(","))
    return x.permute(0, 1, *(2 + p for p in perm)).contiguous()


def synthetic_brain(modalities: Sequence[str] | None, size: int = 64, index: int = 0, seed: int = 0) -> torch.Tensor:
    """A synthetic healthy brain ``(1, C, size, size, size)`` in RAS+ order, z-scored in the brain, 0 outside.

    Channels follow ``modalities`` (t1, t1ce, t2, flair; anything else or None: T1). The MNI-grid
    volume is zero-padded to a cube and resampled, so every orientation has the same shape.

    Example:
        >>> synthetic_brain(["t1", "flair"], size=32).shape
        torch.Size([1, 2, 32, 32, 32])
    """
    from kit.data.synth import make_subject
    from kit.models.transfer import canonical_modality

    subject = make_subject("healthy", index, seed=seed, resolution_mm=4.0)
    names = [canonical_modality(m) for m in (modalities or ["t1"])]
    channels = []
    for name in names:
        image = subject.images.get(name, subject.images["t1"]).astype(np.float32)
        brain = image > 0
        image = np.where(brain, (image - image[brain].mean()) / (image[brain].std() + 1e-6), 0.0)
        channels.append(image)
    volume = torch.from_numpy(np.stack(channels)).float()
    side = max(volume.shape[1:])
    pads = [(side - s) // 2 for s in volume.shape[1:]]
    cube = torch.zeros(len(names), side, side, side)
    cube[:, pads[0]:pads[0] + volume.shape[1], pads[1]:pads[1] + volume.shape[2], pads[2]:pads[2] + volume.shape[3]] = volume
    return F.interpolate(cube[None], size=(size,) * 3, mode="trilinear", align_corners=False)


def ssl_heads(state: Mapping[str, torch.Tensor], in_channels: int) -> dict[str, nn.Module]:
    """The SSL heads of an SSLHead state dict (keys ``rotation_head.*``, ``conv.*``) as modules.

    ``'rotation'``: ``Linear(dim, 4)``; ``'reconstruction'``: the ``upsample='vae'`` decoder of Swin
    UNETR's SSLHead (5 conv-norm-LeakyReLU-upsample steps, then a 1x1 conv to ``in_channels``), when
    the keys and shapes are exactly its. Other heads are ignored.

    Example:
        >>> sorted(ssl_heads({"rotation_head.weight": torch.zeros(4, 192), "rotation_head.bias": torch.zeros(4)}, 1))
        ['rotation']
    """
    heads: dict[str, nn.Module] = {}
    weight = state.get("rotation_head.weight")
    if weight is not None and weight.ndim == 2 and weight.shape[0] == 4 and "rotation_head.bias" in state:
        rotation = nn.Linear(weight.shape[1], 4)
        rotation.load_state_dict({"weight": weight, "bias": state["rotation_head.bias"]})
        heads["rotation"] = rotation
    first = state.get("conv.0.weight")
    if first is not None and first.ndim == 5:
        dim = first.shape[1]
        widths = [dim, dim // 2, dim // 4, dim // 8, dim // 16, dim // 16]
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv3d(widths[i], widths[i + 1], 3, padding=1), nn.InstanceNorm3d(widths[i + 1]),
                       nn.LeakyReLU(), nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)]
        layers.append(nn.Conv3d(widths[-1], in_channels, 1))
        decoder = nn.Sequential(*layers)
        wanted = {f"conv.{k}": v for k, v in decoder.state_dict().items()}
        given = {k: v for k, v in state.items() if k.startswith("conv.")}
        if set(given) == set(wanted) and all(given[k].shape == wanted[k].shape for k in wanted):
            decoder.load_state_dict({k[len("conv."):]: v for k, v in given.items()})
            heads["reconstruction"] = decoder
    return heads


@dataclass
class AxisCheck:
    """What :func:`check_axis_order` found.

    Attributes:
        head: ``'rotation'`` or ``'reconstruction'`` (the head scored).
        scores: orientation -> score (higher is better).
        preferred: the orientation with the best score, or :data:`IDENTITY` when none beats it clearly.
        margin: best score minus RAS+'s.
    """

    head: str
    scores: dict[str, float] = field(default_factory=dict)
    preferred: str = IDENTITY
    margin: float = 0.0

    @property
    def ras_ok(self) -> bool:
        """True when the weights prefer the kit's RAS+ order (no other orientation clearly better)."""
        return self.preferred == IDENTITY

    def summary(self) -> str:
        """One line: the preferred orientation and, when it is not RAS+, a warning."""
        text = f"{self.head} head prefers {self.preferred} (margin {self.margin:+.3g} over RAS+; 9 orientations)"
        if not self.ras_ok:
            text = ("WARNING: the weights expect another axis order than the kit's RAS+: " + text
                    + "; check the orientation of the data they were trained on")
        return text

    def as_dict(self) -> dict:
        """Plain values, for a checkpoint's ``extra``."""
        return {"head": self.head, "scores": dict(self.scores), "preferred": self.preferred, "margin": float(self.margin)}


def check_axis_order(state: Mapping[str, torch.Tensor], arch: Mapping, modalities: Sequence[str] | None,
                     size: int = 32) -> AxisCheck | None:
    """Score the SSL head of a Swin SSLHead state dict on a synthetic brain in :data:`ORIENTATIONS`.

    Args:
        state: weights in the kit's spelling (``swinViT.*`` plus ``rotation_head.*`` / ``conv.*``).
        arch: ``in_channels``, ``feature_size``, ``depths``, ``num_heads``, ``patch_merging`` of the encoder.
        modalities: the source's input contrasts (None: T1 in every channel).
        size: side of the synthetic cube (a multiple of 32).

    Returns:
        :class:`AxisCheck`, or None when ``state`` holds no usable head (the check cannot run).

    Example:
        >>> check_axis_order({}, {"in_channels": 1, "feature_size": 12}, None) is None
        True
    """
    from kit.models.backbones import create_model

    heads = ssl_heads(state, int(arch["in_channels"]))
    if not heads:
        return None
    encoder = create_model("swinunetr", in_channels=int(arch["in_channels"]), out_channels=1,
                           **{k: v for k, v in arch.items() if k != "in_channels"}).swinViT
    encoder.load_state_dict({k[len("swinViT."):]: v for k, v in state.items() if k.startswith("swinViT.")})
    encoder.eval()
    brain = synthetic_brain(modalities, size=size)
    name = "rotation" if "rotation" in heads else "reconstruction"
    head = heads[name].eval()
    scores = {}
    with torch.no_grad():
        for orientation in ORIENTATIONS:
            x = orient(brain, orientation)
            if name == "rotation":
                batch = torch.cat([torch.rot90(x, k, dims=(3, 4)) for k in range(4)])
                tokens = encoder(batch, True)[4].flatten(2)[:, :, 0]
                logp = torch.log_softmax(head(tokens), dim=1)
                scores[orientation] = float(logp[torch.arange(4), torch.arange(4)].mean())
            else:
                scores[orientation] = -float(F.mse_loss(head(encoder(x, True)[4]), x))
    best = max(scores, key=scores.get)
    margin = scores[best] - scores[IDENTITY]
    clear = margin > (_ROTATION_MARGIN if name == "rotation" else _RECONSTRUCTION_MARGIN * abs(scores[IDENTITY]))
    return AxisCheck(head=name, scores=scores, preferred=best if clear and math.isfinite(margin) else IDENTITY,
                     margin=margin)
