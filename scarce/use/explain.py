"""Model explained: Grad-CAM heatmaps of the predicted class, overlaid on the images the model saw.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the feature maps of one convolutional layer by the
mean gradient of a class score over each map, sums them and keeps the positive part: where the
evidence *for* that class lies, at that layer's resolution, bilinearly upsampled to the input. The
``grad-cam`` package (pytorch-grad-cam) computes it; scarce chooses the layer and the class.

Caveats (docs/using_models.md): the last feature map of EfficientNet-Lite0 is 1/32 of the input,
so a 64 px model gives a 2 x 2 map; each heatmap is scaled to its own maximum, so colours do not
compare across images; and a heatmap shows what the model used, not what is clinically relevant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .. import artifacts
from ..data.augment import normalize, to_float
from ..errors import ScarceError
from ..evaluation.decisions import decide
from ..models.backbones import first_network

# Known timm layouts, most specific first: the module whose output is the last feature map.
_LAST_FEATURE_MODULES = ("bn2",  # EfficientNet, MobileNet: conv_head, then its BatchNorm and activation
                         "layer4",  # ResNet family: the last residual stage
                         "features",  # DenseNet, VGG
                         "stages")  # ConvNeXt, RegNet, ...


def target_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The layer Grad-CAM reads: the last convolutional feature map (name, module)."""
    model = first_network(model)  # an epoch ensemble: its best epoch's network
    for name in _LAST_FEATURE_MODULES:
        module = getattr(model, name, None)
        if module is None:
            continue
        if isinstance(module, nn.Sequential) and len(module):
            return f"{name}.{len(module) - 1}", module[-1]
        return name, module
    convolutions = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ScarceError(f"{type(model).__name__} has no convolutional layer, so Grad-CAM cannot explain it.")
    return convolutions[-1]


def require_grad_cam() -> None:
    """Fail in one sentence, before any slow work, when the optional package is missing."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise ScarceError("Grad-CAM explanations need the package grad-cam; install it with "
                          "pip install 'scarce[explain]'.") from None


def explained_classes(task: str, probs: np.ndarray, values: list[float] | None) -> np.ndarray:
    """The class each heatmap explains: the decision (binary, multi-class), the most probable label (multi-label)."""
    if task == "multilabel":
        return np.asarray(probs).argmax(axis=1)
    return decide(task, probs, values)


def _targets(task: str, classes: np.ndarray) -> list:
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget

    if task == "binary":  # one logit: its own sign for the positive class, its negative for the other
        return [BinaryClassifierOutputTarget(int(k)) for k in classes]
    return [ClassifierOutputTarget(int(k)) for k in classes]


def grad_cam(model: nn.Module, images: torch.Tensor, task: str, classes: np.ndarray,
             batch_size: int = 32) -> np.ndarray:
    """Grad-CAM maps (N x H x W, each scaled to [0, 1]) of ``classes`` for uint8 images (N x 3 x H x W)."""
    require_grad_cam()
    from pytorch_grad_cam import GradCAM

    _, layer = target_layer(model)
    model.eval()
    maps = []
    with GradCAM(model=model, target_layers=[layer]) as cam, torch.enable_grad():
        for start in range(0, len(images), batch_size):
            batch = normalize(to_float(images[start:start + batch_size]))
            maps.append(cam(input_tensor=batch, targets=_targets(task, classes[start:start + batch_size])))
    model.zero_grad(set_to_none=True)  # Grad-CAM's backward passes leave gradients on the weights
    return np.concatenate(maps) if maps else np.zeros((0, *images.shape[2:]), dtype=np.float32)


def overlay(image: torch.Tensor, heatmap: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """An RGB uint8 picture (H x W x 3): the image blended with the heatmap in the jet colour map."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = image.permute(1, 2, 0).numpy().astype(np.float32) / 255
    return show_cam_on_image(rgb, heatmap, use_rgb=True, image_weight=weight)


def write_heatmaps(model: nn.Module, images: torch.Tensor, task: str, classes: np.ndarray,
                   files: list[Path]) -> list[Path]:
    """One PNG per image, at the model's input size, each written atomically."""
    maps = grad_cam(model, images, task, classes)
    if files:
        Path(files[0]).parent.mkdir(parents=True, exist_ok=True)
    for image, heatmap, path in zip(images, maps, files):
        picture = Image.fromarray(overlay(image, heatmap))
        artifacts.atomic_write(Path(path), lambda temporary, p=picture: p.save(temporary, format="PNG"))
    return list(files)
