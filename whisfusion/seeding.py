"""Seeds of independent random streams, one per tuple of non-negative integer keys."""

from __future__ import annotations

import numpy as np


def mixed_seed(*keys: int) -> int:
    """A 64-bit seed for the stream named by `keys` (e.g. seed, rank, step, micro-batch).

    numpy's SeedSequence hashes the whole tuple, so distinct tuples give unrelated seeds; a
    linear mix such as `seed * a + rank * b + step` maps many (rank, step) pairs to one seed.
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])
