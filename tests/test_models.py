"""Backbones: the offline ImageNet weights map correctly, and every family splits into three layer groups."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_image

from scarce.data.augment import IMAGENET_MEAN, IMAGENET_STD
from scarce.errors import ScarceError
from scarce.models.backbones import create_model, efficientnet_lite0_imagenet_weights, layer_groups

CHURCH = 497  # ImageNet class "church, church building"


def test_offline_imagenet_weights_classify_the_china_photo_as_a_church():
    full = create_model("efficientnet_lite0", "scratch", num_outputs=1000)
    full.load_state_dict(efficientnet_lite0_imagenet_weights(full))
    full.eval()
    photo = torch.tensor(load_sample_image("china.jpg")).permute(2, 0, 1).float().div(255)[None]
    photo = F.interpolate(photo, size=(224, 224), mode="bilinear")
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = full((photo - mean) / std).softmax(dim=1)[0]
    assert int(probs.argmax()) == CHURCH
    assert probs[CHURCH] > 0.3
    # The other top guesses are buildings too (bell cote 442, palace 698): the features are real.
    assert set(probs.topk(3).indices.tolist()) == {CHURCH, 442, 698}


def test_imagenet_source_keeps_the_body_weights_and_adds_a_new_head():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "imagenet", num_outputs=1)
    reference = create_model("efficientnet_lite0", "scratch", num_outputs=1000)
    weights = efficientnet_lite0_imagenet_weights(reference)
    state = model.state_dict()
    assert torch.equal(state["conv_stem.weight"], weights["conv_stem.weight"])
    assert torch.equal(state["blocks.6.0.conv_pwl.weight"], weights["blocks.6.0.conv_pwl.weight"])
    assert state["classifier.weight"].shape == (1, 1280)


@pytest.mark.parametrize("backbone, early, late, head", [
    ("efficientnet_lite0", "conv_stem.weight", "conv_head.weight", "classifier.weight"),
    ("resnet18", "layer1.0.conv1.weight", "layer4.1.conv2.weight", "fc.weight"),
    ("densenet121", "features.denseblock1.denselayer1.conv1.weight", "features.denseblock4.denselayer1.conv1.weight",
     "classifier.weight"),
])
def test_every_family_splits_into_early_late_and_head(backbone, early, late, head):
    model = create_model(backbone, "scratch", num_outputs=2)
    groups = layer_groups(model)
    names = [name for name, _ in model.named_parameters()]
    all_grouped = groups.early + groups.late + groups.head
    assert sorted(all_grouped) == sorted(names)  # a partition: every parameter exactly once
    assert len(set(all_grouped)) == len(all_grouped)
    assert early in groups.early and late in groups.late and head in groups.head
    assert set(groups.head) == {n for n in names if n.startswith(head.rsplit(".", 1)[0] + ".")}
    # Early comes before late in the network's own order.
    assert max(names.index(n) for n in groups.early) < min(names.index(n) for n in groups.late)


def test_unknown_backbone_is_one_sentence_with_suggestions():
    with pytest.raises(ScarceError, match=r"Unknown backbone 'resnet_18'.*Similar names: .*resnet"):
        create_model("resnet_18", "scratch")


def test_missing_imagenet_weights_fail_with_a_clear_sentence(tmp_path):
    # A fresh process, since the Hugging Face hub reads HF_HUB_OFFLINE when it is imported.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "TORCH_HOME": str(tmp_path)}
    code = "from scarce.models.backbones import create_model; create_model('resnet18', 'imagenet')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "ImageNet weights for 'resnet18' are neither cached nor downloadable" in result.stderr


def test_unknown_pretrained_source():
    with pytest.raises(ScarceError, match="Unknown pretrained source 'imagenet21k'"):
        create_model("resnet18", "imagenet21k")
