"""The one owner of randomness: a run's seed becomes named, independent random streams.

Every random draw of scarce comes from a stream named here (``numpy.random.SeedSequence`` with
the stream's number as its spawn key), so what one part of a run draws never shifts another's:
turning on an augmentation option leaves the batch order and the training subset as they were,
and the test-time views of seed 0 and seed 1 share nothing. A stream can be split further by
whole numbers (``stream("tta", 3)`` is the third test-time view), again independently.

Numbers are fixed forever: a stream keeps its number when streams are added, so results stay
reproducible across versions of scarce that add streams.
"""

from __future__ import annotations

import numpy as np

# Stream name -> spawn key. Append new streams; never renumber one.
STREAMS = {
    "subset": 0,  # which training images a run gets (nested across N)
    "init": 1,  # the new head's initialisation and any re-sampled weights
    "batches": 2,  # the order of images and their cut into batches, per epoch
    "augment": 3,  # training augmentation
    "mixup": 4,  # MixUp's λ and partners
    "tta": 5,  # test-time augmentation views (one sub-stream per view)
    "bootstrap": 6,  # bootstrap resamples of test images or seeds
    "cv": 7,  # cross-validation folds (radiomics)
    "lr_find": 8,  # the learning-rate sweep's batches and augmentation
    "dropout": 9,  # torch's global generator during training (dropout, stochastic depth)
}


def seed_sequence(seed: int, name: str, *sub: int) -> np.random.SeedSequence:
    """The SeedSequence of stream ``name`` (and sub-stream ``sub``) of ``seed``."""
    if name not in STREAMS:
        raise KeyError(f"unknown random stream {name!r}; add it to scarce.randomness.STREAMS")
    return np.random.SeedSequence(int(seed), spawn_key=(STREAMS[name], *map(int, sub)))


def numpy_generator(seed: int, name: str, *sub: int) -> np.random.Generator:
    """A numpy Generator on stream ``name`` of ``seed``."""
    return np.random.default_rng(seed_sequence(seed, name, *sub))


def integer_seed(seed: int, name: str, *sub: int) -> int:
    """A 63-bit integer drawn from stream ``name``: for APIs that take an integer seed
    (``torch.manual_seed``, scikit-learn's ``random_state`` takes 32 bits: use ``% 2**32``)."""
    return int(seed_sequence(seed, name, *sub).generate_state(1, np.uint64)[0] >> np.uint64(1))


def torch_generator(seed: int, name: str, *sub: int, device=None):
    """A ``torch.Generator`` (on ``device``, CPU by default) seeded from stream ``name``."""
    import torch  # imported here so that the command line starts without torch

    generator = torch.Generator(device=device) if device is not None else torch.Generator()
    return generator.manual_seed(integer_seed(seed, name, *sub))
