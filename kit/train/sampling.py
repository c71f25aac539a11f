"""Deterministic sampling for the training loop: which sample, with which crop seed, on which rank.

The loop sees the data as one endless stream of *global positions* p = 0, 1, 2, ...
Position p belongs to epoch ``p // len(dataset)``, picks the dataset index
``permutation(seed, epoch)[p % len(dataset)]`` and gets its own ``sample_seed(seed, p)``, which
drives every random choice made for that sample (its crop here, its augmentations in the SSL
objective). Optimizer step s consumes positions ``[s * G, (s + 1) * G)`` with
``G = batch_size * world_size * grad_accum``; micro-step m of that step is the slice
``[s * G + m * batch_size * world_size, ...)`` of length ``batch_size * world_size`` and rank r takes
the contiguous part ``r * batch_size : (r + 1) * batch_size`` of it. Hence

- the union over ranks of a step's samples equals the 1-process global batch, with the same seeds;
- starting at optimizer step k yields exactly what an uninterrupted run yields from step k on,
  without replaying the data before it (resume).

Keys handed to the dataset are ``(index, sample_seed)`` tuples; :class:`ArrayCropDataset` is the
in-memory dataset that implements that protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from kit.seeds import sample_seed  # noqa: F401  (re-exported: the loop's stream)
from kit.tensors import to_numpy

__all__ = ["sample_seed", "epoch_permutation", "GlobalBatchSampler", "ArrayCropDataset", "WholeBrainDataset",
           "pretraining_dataset"]

# Separate streams so that the permutation and the per-sample seeds never share entropy.
_PERMUTATION_STREAM = 0  # kit.seeds.sample_seed draws from stream 1


def epoch_permutation(run_seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` of run ``run_seed`` visits the ``n`` dataset indices.

    Example:
        >>> sorted(epoch_permutation(0, 3, 5).tolist())
        [0, 1, 2, 3, 4]
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(run_seed), _PERMUTATION_STREAM, int(epoch)]))
    return rng.permutation(n)


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler that yields this rank's micro-batches as lists of ``(index, sample_seed)`` keys.

    Use as ``DataLoader(dataset, batch_sampler=GlobalBatchSampler(...))``; it yields
    ``(steps - start_step) * grad_accum`` lists of ``batch_size`` keys each.

    Args:
        dataset_size: number of samples in the dataset (one epoch).
        batch_size: samples per rank per micro-step.
        seed: run seed; fixes the epoch permutations and the per-sample seeds.
        steps: total optimizer steps of the run (iteration stops there).
        start_step: first optimizer step to yield (0 for a fresh run, k to resume after k steps).
        grad_accum: micro-steps per optimizer step.
        world_size, rank: data-parallel layout; rank r takes its contiguous slice of every micro-batch.

    Example:
        >>> one = GlobalBatchSampler(10, batch_size=4, seed=0, steps=3)
        >>> two = [GlobalBatchSampler(10, batch_size=2, seed=0, steps=3, world_size=2, rank=r) for r in (0, 1)]
        >>> [a + b for a, b in zip(*two)] == list(one)
        True
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int,
        steps: int,
        start_step: int = 0,
        grad_accum: int = 1,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        if dataset_size < 1:
            raise ValueError(f"GlobalBatchSampler: the dataset is empty (dataset_size={dataset_size})")
        if batch_size < 1 or grad_accum < 1 or world_size < 1:
            raise ValueError(
                f"GlobalBatchSampler: batch_size ({batch_size}), grad_accum ({grad_accum}) and "
                f"world_size ({world_size}) must all be >= 1"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"GlobalBatchSampler: rank {rank} is outside [0, world_size={world_size})")
        if not 0 <= start_step <= steps:
            raise ValueError(f"GlobalBatchSampler: start_step {start_step} is outside [0, steps={steps}]")
        self.dataset_size = int(dataset_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.steps = int(steps)
        self.start_step = int(start_step)
        self.grad_accum = int(grad_accum)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step over all ranks and micro-steps."""
        return self.batch_size * self.world_size * self.grad_accum

    def key_at(self, position: int) -> tuple[int, int]:
        """The ``(index, sample_seed)`` key at global stream position ``position``."""
        epoch, offset = divmod(int(position), self.dataset_size)
        if epoch not in self._permutations:
            self._permutations = {epoch: epoch_permutation(self.seed, epoch, self.dataset_size)}  # keep one epoch
        return int(self._permutations[epoch][offset]), sample_seed(self.seed, position)

    def micro_batch(self, step: int, micro_step: int) -> list[tuple[int, int]]:
        """This rank's keys for micro-step ``micro_step`` of optimizer step ``step`` (both 0-based)."""
        first = (
            step * self.global_batch_size
            + micro_step * self.batch_size * self.world_size
            + self.rank * self.batch_size
        )
        return [self.key_at(p) for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.steps):
            for micro_step in range(self.grad_accum):
                yield self.micro_batch(step, micro_step)

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.grad_accum


class ArrayCropDataset(Dataset):
    """Random crops of in-memory (or memory-mapped) volumes, addressed by ``(index, sample_seed)`` keys.

    The crop corner is drawn from ``numpy.random.default_rng(sample_seed)``, so a key always gives
    the same crop. Volumes smaller than the crop are zero-padded (centred) first.

    Args:
        arrays: sequence of arrays or tensors shaped (C, D, H, W), all with the same C;
            ``numpy.memmap`` arrays are read lazily (only the crop is copied).
        crop_size: (d, h, w) in voxels, or one int for a cube.

    Returns (``__getitem__``):
        float32 tensor (C, d, h, w).

    Example:
        >>> vols = [np.random.rand(2, 40, 40, 40).astype("float32") for _ in range(3)]
        >>> ds = ArrayCropDataset(vols, 32)
        >>> ds[(1, 123)].shape
        torch.Size([2, 32, 32, 32])
        >>> torch.equal(ds[(1, 123)], ds[(1, 123)])
        True
    """

    def __init__(self, arrays: Sequence, crop_size: int | Sequence[int]) -> None:
        if len(arrays) == 0:
            raise ValueError("ArrayCropDataset: no arrays given")
        self.crop_size = (int(crop_size),) * 3 if np.isscalar(crop_size) else tuple(int(c) for c in crop_size)
        if len(self.crop_size) != 3 or min(self.crop_size) < 1:
            raise ValueError(f"ArrayCropDataset: crop_size must be 3 positive ints, got {crop_size!r}")
        channels = None
        for i, array in enumerate(arrays):
            if len(array.shape) != 4:
                raise ValueError(f"ArrayCropDataset: array {i} has shape {tuple(array.shape)}, expected (C, D, H, W)")
            if channels is not None and array.shape[0] != channels:
                raise ValueError(
                    f"ArrayCropDataset: array {i} has {array.shape[0]} channels, array 0 has {channels}"
                )
            channels = array.shape[0]
        # Tensors become numpy views (no copy) so that one indexing path serves both.
        self.arrays = [to_numpy(a) if torch.is_tensor(a) else a for a in arrays]
        self.in_channels = int(channels)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        try:
            index, seed = key
        except (TypeError, ValueError):
            raise TypeError(f"ArrayCropDataset: keys are (index, sample_seed) tuples, got {key!r}") from None
        array = self.arrays[int(index)]
        rng = np.random.default_rng(int(seed))
        spatial = array.shape[1:]
        corner = [int(rng.integers(0, max(s - c, 0) + 1)) for s, c in zip(spatial, self.crop_size)]
        region = tuple(slice(o, o + c) for o, c in zip(corner, self.crop_size))
        crop = np.ascontiguousarray(array[(slice(None), *region)], dtype=np.float32)
        missing = [c - s for c, s in zip(self.crop_size, crop.shape[1:])]
        if any(m > 0 for m in missing):
            crop = np.pad(crop, [(0, 0)] + [(max(m, 0) // 2, max(m, 0) - max(m, 0) // 2) for m in missing])
        return torch.from_numpy(crop)


class WholeBrainDataset(Dataset):
    """Each subject's whole brain-cropped volume resized (trilinear) to one cube: brain-aligned inputs.

    The cache keeps each volume cropped to its brain's bounding box, and the brains are roughly
    aligned (MNI-registered: UK Biobank, BraTS; the synthetic cohorts are deformed MNI brains), so
    after resizing, voxel ``(i, j, k)`` is about the same anatomy in every subject. An objective
    that reads anatomy from position (``anatomy_hierarchy``: Adam's grid of anatomical parts) needs
    this; a random crop would put a different part of the brain under each grid cell. The key's
    sample seed is unused (the input is deterministic; the objective draws its own views).

    Args:
        arrays: sequence of arrays shaped (C, D, H, W), all with the same C.
        size: the cube's side in voxels.

    Returns (``__getitem__``):
        float32 tensor (C, size, size, size).

    Example:
        >>> vols = [np.random.rand(2, 40, 50, 30).astype("float32") for _ in range(3)]
        >>> WholeBrainDataset(vols, 32)[(2, 7)].shape
        torch.Size([2, 32, 32, 32])
    """

    def __init__(self, arrays: Sequence, size: int) -> None:
        self._crops = ArrayCropDataset(arrays, 1)  # the same checks of shapes and channels
        if int(size) < 2:
            raise ValueError(f"WholeBrainDataset: size must be >= 2 voxels, got {size!r}")
        self.arrays, self.in_channels, self.size = self._crops.arrays, self._crops.in_channels, int(size)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index = key[0] if isinstance(key, tuple) else key
        volume = torch.from_numpy(np.array(self.arrays[int(index)], dtype=np.float32))  # a writable copy of the memmap
        resized = torch.nn.functional.interpolate(volume[None], size=(self.size,) * 3, mode="trilinear",
                                                  align_corners=False)
        return resized[0]


def pretraining_dataset(arrays: Sequence, crop: int, input_mode: str = "crop") -> Dataset:
    """The 3D dataset an objective trains on: random ``crop``^3 crops (``'crop'``) or the whole brain
    resized to ``crop``^3 (``'brain'``, :class:`WholeBrainDataset`), as the objective class declares in
    its ``input_mode`` attribute.

    Example:
        >>> vols = [np.random.rand(1, 40, 40, 40).astype("float32")]
        >>> type(pretraining_dataset(vols, 32, "brain")).__name__, pretraining_dataset(vols, 32)[(0, 1)].shape
        ('WholeBrainDataset', torch.Size([1, 32, 32, 32]))
    """
    if input_mode == "crop":
        return ArrayCropDataset(arrays, crop)
    if input_mode == "brain":
        return WholeBrainDataset(arrays, crop)
    raise ValueError(f"pretraining_dataset: input_mode must be 'crop' or 'brain', got {input_mode!r}")
