"""ONNX export of a trained classifier's whole decision path, and an onnxruntime member to run it.

:func:`export_onnx` writes a :class:`~skintumor.models.module.DecisionPath` as one self-contained
``.onnx`` file (weights inside, opset :data:`OPSET`). The graph carries the decision, not only the
logits: the network, the horizontal-flip TTA when the model was trained with it, the softmax, and
the per-class decision offsets on the log-probabilities, so argmax of its ``probs`` is the
model's decision with nothing to re-implement beside it.

Graph contract (what :class:`OnnxMember` runs):
    input  ``image``  float32 (batch, 1, image_size, image_size), normalised like the training images
    output ``probs``  float32 (batch, C), probabilities after the offsets (argmax = decision)
    output ``scores`` float32 (batch, C), the network's probabilities (with TTA) before the offsets,
        what AUROC ranks
The batch axis is dynamic; the image size is fixed at export.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from skintumor.errors import DataError
from skintumor.models.module import DecisionPath

OPSET = 18  # >= 17; the dynamo exporter's native opset, so no version conversion pass
INPUT, OUTPUTS = "image", ("probs", "scores")


def export_onnx(path: DecisionPath, out: str | Path, image_size: int) -> Path:
    """Export ``path`` to ``out`` (one file, weights included), check it with ``onnx.checker``; returns ``out``.

    The caller's module is left as it is: a CPU, eval-mode, contiguous-format copy is exported
    (training modules default to channels_last).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = copy.deepcopy(path).to("cpu").to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, 1, image_size, image_size)  # batch 2: torch.export specialises a batch of 1
    # dynamo exporter: the supported one (TorchScript's is deprecated and warns on every call); quiet with verbose=False
    torch.onnx.export(
        module,
        (example,),
        str(out),
        dynamo=True,
        opset_version=OPSET,
        input_names=[INPUT],
        output_names=list(OUTPUTS),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
        verbose=False,
    )
    onnx.checker.check_model(str(out), full_check=True)
    return out


def _first_line(err: Exception) -> str:
    """onnxruntime's error without its "[ONNXRuntimeError] : N : CODE : Load model from F failed:" prefix."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return re.sub(r"^\[ONNXRuntimeError\].*?failed:\s*", "", line).strip() or type(err).__name__


class OnnxMember:
    """One exported model under onnxruntime: ``OnnxMember(path)(x) -> (probs, scores)``.

    x: float32 (B, 1, H, W) with H = W = :attr:`image_size`; probs, scores: float32 (B, C) as in
    the module docstring. CUDA when onnxruntime has it, else CPU with onnxruntime's default
    threads. A missing, truncated or non-ONNX file, or an ONNX file that is not a decision-path
    export, raises :class:`~skintumor.errors.DataError` in one line naming the file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such ONNX model file")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of convolutions: nothing to overlap
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no provider-placement chatter
        # idle threads must not spin: in an ensemble the next member's threads need those cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime's InvalidProtobuf, InvalidArgument, Fail, ...: all about the file
            raise DataError(f"{self.path}: not a readable ONNX model ({_first_line(err)})") from None
        inputs = self.session.get_inputs()
        outputs = tuple(o.name for o in self.session.get_outputs())
        if [i.name for i in inputs] != [INPUT] or outputs != OUTPUTS or len(inputs[0].shape) != 4:
            raise DataError(
                f"{self.path}: not a skintumor decision-path export "
                f"(inputs {[i.name for i in inputs]}, outputs {list(outputs)}; want [{INPUT!r}], {list(OUTPUTS)})"
            )
        shape = inputs[0].shape
        self.image_size = shape[-1] if isinstance(shape[-1], int) else None
        self.num_classes = self.session.get_outputs()[0].shape[-1]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 1, H, W) float32 normalised images -> probs (B, C), scores (B, C)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 1 or (self.image_size is not None and x.shape[-2:] != (self.image_size,) * 2):
            raise ValueError(f"{self.path} takes (B, 1, {self.image_size}, {self.image_size}) images, got {x.shape}")
        probs, scores = self.session.run(list(OUTPUTS), {INPUT: x})
        return probs, scores
