"""The callable every augmentation is: albumentations Compose with one shared, seedable random state.

Own seeding, not ``A.Compose(seed=...)``: albumentations 2.0.8 gives every child transform its own
generator seeded with the *same* seed, so two ops with equal probability always fire together.
Here all transforms draw from one generator, and each DataLoader worker gets its own stream.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import get_worker_info


class Augmentation:
    """``t(image=uint8 HxW) -> {"image": uint8 HxW}`` (albumentations Compose semantics).

    Args:
        transforms: albumentations transforms, applied in order.
        seed: the same seed gives the same sequence of outputs; None draws one from torch's global
            generator, so ``lightning.seed_everything`` makes training runs reproducible.
        name: what this augmentation is, for logs and ``repr``.

    In a DataLoader worker the stream is re-seeded from ``(seed, torch's worker seed)``, so workers
    do not repeat each other and runs stay reproducible once torch is seeded.
    """

    def __init__(self, transforms: Sequence[A.BasicTransform], seed: int | None = None, name: str = "augmentation"):
        self.compose = A.Compose(list(transforms))
        self.seed = seed
        self.name = name
        self._stream: tuple | None = None
        self._reseed((int(torch.randint(2**62, ())),) if seed is None else (seed,))

    def _reseed(self, entropy: tuple) -> None:
        rng = np.random.default_rng(list(entropy))
        self.compose.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        self._stream = entropy

    def __call__(self, **data) -> dict:
        worker = get_worker_info()
        if worker is not None:
            entropy = (worker.seed,) if self.seed is None else (self.seed, worker.seed)
            if entropy != self._stream:
                self._reseed(entropy)
        return self.compose(**data)

    def __repr__(self) -> str:
        return f"Augmentation({self.name!r}, seed={self.seed}, {len(self.compose.transforms)} transform(s))"
