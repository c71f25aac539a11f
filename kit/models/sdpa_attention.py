"""SwinUNETR's window attention through ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).

MONAI's ``WindowAttention`` computes ``softmax(q k^T * scale + bias + shift_mask) v`` with explicit
matrix products, and takes its SDPA path only when gradients are off (inference), so training runs
the unfused bmm + softmax. :class:`SDPAWindowAttention` is the same module (same parameters, buffers
and state-dict keys) whose ``forward`` always calls SDPA, passing the relative position bias plus,
for shifted windows, MONAI's ``-100`` shift mask as one additive float ``attn_mask``. On a GPU SDPA
picks a fused kernel (memory-efficient attention supports an additive mask and its gradient); on a
CPU it is the same arithmetic as MONAI's.

For shifted windows the ``nw`` windows of a sample and the heads are merged into one axis
(``(B*nw, heads, n, d) -> (B, nw*heads, n, d)``), so the mask is ``(1, nw*heads, n, n)``, shared by
the batch, instead of a ``(B*nw, heads, n, n)`` copy per sample.

Reference: Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
ICCV 2021 (https://github.com/microsoft/Swin-Transformer); MONAI ``monai.networks.nets.swin_unetr``.

Example:
    >>> from monai.networks.nets import SwinUNETR
    >>> net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12)
    >>> use_sdpa_attention(net)
    8
    >>> type(net.swinViT.layers1[0].blocks[0].attn).__name__
    'SDPAWindowAttention'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn

__all__ = ["SDPAWindowAttention", "use_sdpa_attention", "use_monai_attention"]


class SDPAWindowAttention(WindowAttention):
    """MONAI ``WindowAttention`` whose forward is one ``scaled_dot_product_attention`` call (also when training).

    Made from an existing module by :func:`use_sdpa_attention` (the class is swapped in place);
    numerically the same function as MONAI's (tested on CPU: float32 to 1e-5, bf16 autocast to bf16
    precision), attention dropout included (``attn_drop.p`` while training).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention within windows.

        Args:
            x: (B*nw, n, C) tokens of ``nw`` windows of ``n`` tokens per sample (window-major per sample).
            mask: None, or (nw, n, n) additive shift mask (0 or -100), from MONAI's ``compute_mask``.

        Returns:
            (B*nw, n, C).
        """
        b, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (b, heads, n, d) each
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, heads).permute(2, 0, 1)  # (heads, n, n)
        if mask is None:
            attn_mask = bias.unsqueeze(0)  # (1, heads, n, n), broadcast over windows
        else:
            nw = mask.shape[0]
            q, k, v = (t.reshape(b // nw, nw * heads, n, -1) for t in (q, k, v))
            attn_mask = (bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)).reshape(1, nw * heads, n, n)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask.to(q.dtype),  # SDPA wants the mask in the query's dtype (bf16 under autocast)
            dropout_p=self.attn_drop.p if self.training else 0.0,
            scale=self.scale,
        )
        out = out.reshape(b, heads, n, -1).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


def use_sdpa_attention(model: nn.Module) -> int:
    """Swap every MONAI ``WindowAttention`` in ``model`` for :class:`SDPAWindowAttention`, in place.

    Parameters, buffers and state-dict keys are unchanged (only the class is). Returns the number of
    modules swapped (8 for SwinUNETR's default depths (2, 2, 2, 2)).

    Example:
        >>> use_sdpa_attention(nn.Linear(2, 2))
        0
    """
    return _swap_class(model, WindowAttention, SDPAWindowAttention)


def use_monai_attention(model: nn.Module) -> int:
    """Undo :func:`use_sdpa_attention`: MONAI's own ``WindowAttention.forward`` again. Returns the count.

    Example:
        >>> use_monai_attention(nn.Linear(2, 2))
        0
    """
    return _swap_class(model, SDPAWindowAttention, WindowAttention)


def _swap_class(model: nn.Module, old: type, new: type) -> int:
    """Give every module of exactly class ``old`` the class ``new`` (same parameters); returns the count."""
    swapped = 0
    for module in model.modules():
        if type(module) is old:
            module.__class__ = new
            swapped += 1
    return swapped
