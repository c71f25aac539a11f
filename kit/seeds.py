"""The per-sample seeds of the training stream, at the bottom of the kit.

The loop's sampler (:mod:`kit.train.sampling`) gives global stream position ``p`` of run ``seed`` the seed
``sample_seed(seed, p)``; the SSL objectives' held-out pretext metrics (:mod:`kit.ssl.pretext`) draw from the
same function, so it lives below both rooms and imports nothing of the kit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sample_seed"]

# Stream 0 is the epoch permutation's (kit.train.sampling), so the two never share entropy.
_SAMPLE_STREAM = 1


def sample_seed(run_seed: int, position: int) -> int:
    """Seed of the sample at global stream position ``position`` of run ``run_seed``.

    A SeedSequence hash of (run_seed, position), so nearby positions get unrelated seeds.

    Returns:
        int in [0, 2**63), so it fits in an int64 tensor.

    Example:
        >>> sample_seed(0, 5) == sample_seed(0, 5) != sample_seed(1, 5)
        True
    """
    state = np.random.SeedSequence([int(run_seed), _SAMPLE_STREAM, int(position)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))
