"""One owner of randomness: named streams that stay independent of each other and of options."""

import numpy as np
import pytest
import torch
from conftest import synthetic_split
from torch import nn

import scarce.training.loop as loop
from scarce.data.subsets import balanced_subset
from scarce.evaluation.inference import predict
from scarce.models.backbones import create_model
from scarce.randomness import STREAMS, integer_seed, numpy_generator, torch_generator
from scarce.training.recipes import get_recipe


def test_streams_are_reproducible_distinct_and_named():
    draws = {name: numpy_generator(7, name).integers(0, 2**31, 4).tolist() for name in STREAMS}
    assert draws == {name: numpy_generator(7, name).integers(0, 2**31, 4).tolist() for name in STREAMS}
    assert len({tuple(d) for d in draws.values()}) == len(STREAMS)  # no two streams draw alike
    assert numpy_generator(7, "tta", 1).random() != numpy_generator(7, "tta", 2).random()
    assert numpy_generator(7, "tta", 1).random() != numpy_generator(8, "tta", 1).random()
    assert len(set(STREAMS.values())) == len(STREAMS)  # spawn keys are unique
    assert 0 <= integer_seed(0, "init") < 2**63
    a, b = torch_generator(3, "augment", 5), torch_generator(3, "augment", 5)
    assert torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
    with pytest.raises(KeyError, match="unknown random stream 'shuffle'"):
        numpy_generator(0, "shuffle")


class ViewRecorder(nn.Module):
    """A real module that keeps every batch it is shown and answers with zero logits."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(len(x), 1)


def _augmented_views(seed: int, tta: int) -> list[torch.Tensor]:
    recorder = ViewRecorder()
    predict(recorder, synthetic_split(6, size=24, seed=0).images, "binary", tta=tta, seed=seed)
    return recorder.seen[1:]  # the first pass is the clean one, the same for every seed


def test_tta_views_of_two_seeds_share_nothing():
    """Views of seed s used to be drawn with seeds s+1..s+k, so seeds 0 and 1 shared k-1 of their k views."""
    first, second = _augmented_views(0, 4), _augmented_views(1, 4)
    assert len(first) == len(second) == 4
    for a in first:
        for b in second:
            assert not torch.allclose(a, b), "two seeds drew the same test-time view"
    assert all(not torch.allclose(a, b) for i, a in enumerate(first) for b in first[i + 1:])
    assert all(torch.equal(a, b) for a, b in zip(first, _augmented_views(0, 4)))  # and reproducible


def _batch_order(monkeypatch, recipe) -> list[list[int]]:
    order = []

    def recording(*args, **kwargs):
        for index in real(*args, **kwargs):
            order.append(np.asarray(index).tolist())
            yield index

    real = loop.batches
    monkeypatch.setattr(loop, "batches", recording)
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch", 1)
    loop.fit(model, synthetic_split(24, seed=0), synthetic_split(8, seed=1), "binary", recipe, epochs=3,
             batch_size=8, seed=5, progress=False)
    monkeypatch.setattr(loop, "batches", real)
    return order


@pytest.mark.parametrize("option", [{"erase": 0.5}, {"zoom": 0.2, "contrast": 0.2}, {"mixup_alpha": 0.4}])
def test_an_option_that_draws_leaves_the_batch_order_alone(monkeypatch, option):
    plain = _batch_order(monkeypatch, get_recipe("scratch", select_by="last"))
    changed = _batch_order(monkeypatch, get_recipe("scratch", select_by="last", **option))
    assert len(plain) == 9  # 24 images in batches of 8, three epochs
    assert changed == plain
    assert plain[0] != plain[3]  # each epoch is shuffled anew


def test_training_subset_depends_on_the_seed_only():
    labels = np.arange(400) % 2
    subset = balanced_subset(labels, 40, seed=2)
    assert np.array_equal(subset, balanced_subset(labels, 40, seed=2))
    assert not np.array_equal(subset, balanced_subset(labels, 40, seed=3))
    assert np.bincount(labels[subset]).tolist() == [20, 20]
    assert set(balanced_subset(labels, 20, seed=2)) <= set(subset)  # nested across N
