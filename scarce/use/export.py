"""Model exported: an ONNX file, and beside it the preprocessing and decisions it needs, as JSON.

``torch.onnx.export`` with the torch.export-based ("dynamo") exporter, torch's default since 2.9
(the TorchScript exporter is deprecated and slated for removal). It runs offline; it needs the
packages ``onnx`` and ``onnxscript``, and the parity check needs ``onnxruntime`` (the ``export``
extra). The graph is the model in evaluation mode, one clean pass (no test-time augmentation),
with a dynamic batch axis; it returns the logits and the task's probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import artifacts
from ..data.augment import IMAGENET_MEAN, IMAGENET_STD, normalize, to_float
from ..errors import ScarceError
from ..evaluation.decisions import thresholded_outputs
from .predict import TrainedModel, load_model_folder, refuse_model_file

FORMATS = ("onnx",)


OPSET = 18


class WithProbabilities(nn.Module):
    """The model, returning (logits, probabilities): sigmoid per output, or softmax for multi-class."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return logits, logits.softmax(dim=1) if self.task == "multiclass" else logits.sigmoid()


def spec_path(onnx_file: Path) -> Path:
    """Where the JSON spec of an exported file goes: ``model.onnx`` → ``model.preprocessing.json``."""
    onnx_file = Path(onnx_file)
    return onnx_file.with_name(f"{onnx_file.stem}.preprocessing.json")


def preprocessing_spec(trained: TrainedModel, onnx_file: Path) -> dict:
    """Everything a consumer of the ONNX file needs to feed it and read it, as scarce does."""
    size, task, classes = trained.size, trained.task, trained.classes
    thresholds = trained.thresholds or {}
    return {
        "format": "onnx",
        "file": Path(onnx_file).name,
        "opset": OPSET,
        "exporter": f"torch.onnx.export (dynamo), torch {torch.__version__}",
        "input": {"name": "images", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, size, size],
                  "channel_order": "RGB"},
        "preprocessing": {
            "decode": "8-bit gray or RGB; deeper images mapped to 0..255 by min-max per image "
                      "(DICOM: modality and VOI LUT or window first), as docs/data.md describes",
            "resize": f"to {size} x {size} pixels, bilinear with antialiasing, aspect ratio not kept",
            "channels": "a gray image is replicated to 3 channels",
            "scale": "divide by 255 to get 0..1",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "formula": "x[c] = (pixel[c] / 255 - mean[c]) / std[c]",
        },
        "outputs": {
            "logits": {"shape": ["batch", trained.info["num_outputs"]]},
            "probabilities": {"shape": ["batch", trained.info["num_outputs"]],
                              "meaning": {"binary": f"P({classes[1]}) (sigmoid of the logit)",
                                          "multiclass": "softmax over the classes, in class order",
                                          "multilabel": "sigmoid per label, in label order"}[task]},
        },
        "task": task,
        "classes": classes,
        "decision": "argmax over probabilities" if task == "multiclass" else
                    f"{thresholded_outputs(task, classes)} positive when probability >= threshold",
        "thresholds": {name: entry["values"] for name, entry in thresholds.get("thresholds", {}).items()},
        "thresholds_chosen_on": thresholds.get("chosen_on"),
        "test_time_augmentation": f"not in the graph; scarce averaged 1 clean and {trained.tta} augmented "
                                  f"passes ({describe_views(trained.tta_views)}) for its metrics",
        "source_checkpoint_sha256": _sha256(trained.folder / "model.safetensors"),
    }


def describe_views(views) -> str:
    """The test-time views in words: 'rotation ±10°, horizontal flip, 4 px shift' for the standard ones."""
    parts = [f"rotation ±{views.rotation:g}°" if views.rotation else "no rotation",
             "horizontal flip" if views.flip else "no flip",
             f"{views.shift} px shift" if views.shift else "no shift"]
    return ", ".join(parts)


def _sha256(path: Path) -> str:
    from ..data.dataset import file_fingerprint

    return file_fingerprint(path)


def export_model(model: str | Path, format: str = "onnx", out: str | Path | None = None) -> tuple[Path, Path, dict]:
    """``scarce export``: write the ONNX file and its spec; return their paths and the spec."""
    if format not in FORMATS:
        raise ScarceError(f"Unknown export format '{format}'; scarce exports {', '.join(FORMATS)}.")
    trained = load_model_folder(model)
    out = Path(out) if out is not None else trained.folder / "model.onnx"
    if out.is_dir():
        raise ScarceError(f"--out {out} is a folder; give a file name such as {out}/model.onnx.")
    if spec_path(out).is_dir():
        raise ScarceError(f"{spec_path(out)}, where the spec of {out.name} goes, is a folder; move it or "
                          f"choose another --out.")
    for path in (out, spec_path(out)):
        refuse_model_file(path, trained.folder)
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; fail here in one sentence)
    except ImportError:
        raise ScarceError("ONNX export needs the packages onnx and onnxscript; install them with "
                          "pip install 'scarce[export]'.") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapped = WithProbabilities(trained.model, trained.task).eval()
    example = example_inputs(trained.size, 2)
    with torch.no_grad():
        program = torch.onnx.export(wrapped, (example,), dynamo=True, verbose=False, opset_version=OPSET,
                                    input_names=["images"], output_names=["logits", "probabilities"],
                                    dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
    artifacts.atomic_write(out, lambda temporary: program.save(temporary, external_data=False))
    spec = preprocessing_spec(trained, out)
    spec["parity"] = parity_check(out, wrapped, example_inputs(trained.size, 3, seed=1))
    artifacts.write_json(spec_path(out), spec)
    return out, spec_path(out), spec


def example_inputs(size: int, batch: int, seed: int = 0) -> torch.Tensor:
    """Preprocessed random uint8 images: real-valued inputs of the right range for tracing and checks."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8)
    return normalize(to_float(images))


def onnx_outputs(onnx_file: Path, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run the ONNX file with onnxruntime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": np.ascontiguousarray(inputs, dtype=np.float32)})))


def parity_check(onnx_file: Path, wrapped: nn.Module, inputs: torch.Tensor) -> dict:
    """Largest absolute difference between PyTorch and onnxruntime probabilities (a batch unlike the traced one)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {"checked": False, "why": "onnxruntime is not installed"}
    with torch.no_grad():
        expected = wrapped(inputs)[1].numpy()
    found = onnx_outputs(onnx_file, inputs.numpy())["probabilities"]
    return {"checked": True, "inputs": f"{len(inputs)} random uint8 images, preprocessed",
            "max_abs_diff_probabilities": float(np.abs(found - expected).max())}


def probabilities_from_onnx(onnx_file: Path, images: torch.Tensor, task: str) -> np.ndarray:
    """scarce-shaped probabilities (binary: (N,)) from the ONNX file for uint8 images."""
    found = onnx_outputs(onnx_file, normalize(to_float(images)).numpy())["probabilities"]
    return found[:, 0] if task == "binary" else found
