"""Which images each process trains on at each step, as a pure function of the seed.

Every epoch shuffles the images of each bucket, cuts them into global batches
(``batch_size * world_size`` images, all from one bucket, topped up by wrapping around) and
shuffles the batches. Process ``rank`` takes its slice of the global batch. Nothing here has
state to save: a resumed job and a job with a different number of processes see the same global
batches at the same step.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass
from functools import lru_cache


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from the parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return struct.unpack("<Q", digest)[0] >> 1


@dataclass(frozen=True)
class SampleSlot:
    """One image of a global batch: which image, and its seed for flips/crops/noise."""

    image_index: int
    seed: int
    ordinal: int  # how many images all processes trained on before this one

    def class_index(self, num_class_images: int) -> int:
        """Prior preservation pairs samples with class images round-robin."""
        return self.ordinal % num_class_images


class BatchPlan:
    def __init__(self, groups: list[list[int]], *, batch_size: int, world_size: int,
                 seed: int) -> None:
        groups = [sorted(group) for group in groups if group]
        if not groups:
            raise ValueError("no images to plan batches for")
        self.groups = groups
        self.batch_size = batch_size
        self.world_size = world_size
        self.global_batch_size = batch_size * world_size
        self.seed = seed
        self._epoch_batches = lru_cache(maxsize=4)(self._build_epoch)
        self.batches_per_epoch = len(self._epoch_batches(0))

    def _build_epoch(self, epoch: int) -> tuple[tuple[int, ...], ...]:
        rng = random.Random(mix_seed(self.seed, "epoch", epoch))
        batches: list[tuple[int, ...]] = []
        size = self.global_batch_size
        for group in self.groups:
            order = list(group)
            rng.shuffle(order)
            count = -(-len(order) // size)
            padded = [order[i % len(order)] for i in range(count * size)]
            batches.extend(tuple(padded[i:i + size]) for i in range(0, len(padded), size))
        rng.shuffle(batches)
        return tuple(batches)

    def global_batch(self, index: int) -> tuple[int, ...]:
        epoch, position = divmod(index, self.batches_per_epoch)
        return self._epoch_batches(epoch)[position]

    def slots(self, *, step: int, micro_step: int, accumulation: int,
              rank: int) -> list[SampleSlot]:
        """The images process ``rank`` trains on in micro-step ``micro_step`` of ``step``."""
        index = step * accumulation + micro_step
        batch = self.global_batch(index)
        start = rank * self.batch_size
        return [
            SampleSlot(image_index=batch[position],
                       seed=mix_seed(self.seed, "sample", index, position),
                       ordinal=index * self.global_batch_size + position)
            for position in range(start, start + self.batch_size)
        ]
