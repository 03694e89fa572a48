"""ONNX export of the decision path (skintumor.deploy.onnx): the graph onnxruntime runs decides as
DecisionPath does in torch (TTA, softmax, offsets), with any batch size, and bad files are DataErrors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from skintumor.deploy.onnx import OnnxMember, export_onnx
from skintumor.errors import DataError
from skintumor.models.module import DecisionPath, SkinTumorClassifier

CLASSES = ["cyst", "lipoma", "pilomatricoma"]
OFFSETS = [0.9, -0.6, 0.3]
# name: (net, tta, offsets, image size); together every value of each option the brief names
CONFIGS = {
    "gates-hflip-offsets": ({"attention": True, "lesion_decoder": False}, "hflip", OFFSETS, 64),
    "plain-none-zero": ({"attention": False, "lesion_decoder": False}, None, None, 32),
    "decoder-none-offsets": ({"attention": True, "lesion_decoder": True}, None, OFFSETS, 32),
}
TOLERANCE = 1e-4


def build(net: dict, tta: str | None, offsets: list[float] | None, size: int) -> SkinTumorClassifier:
    torch.manual_seed(0)
    classifier = SkinTumorClassifier(classes=CLASSES, class_counts=[1, 1, 1], image_size=size, tta=tta, net=net)
    if offsets is not None:
        classifier.decision_offsets.copy_(torch.tensor(offsets))
    return classifier.eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (classifier, its DecisionPath, the exported file); each exported once per module."""
    folder = tmp_path_factory.mktemp("onnx")
    done: dict[str, tuple[SkinTumorClassifier, DecisionPath, object]] = {}

    def get(name: str):
        if name not in done:
            net, tta, offsets, size = CONFIGS[name]
            classifier = build(net, tta, offsets, size)
            path = DecisionPath(classifier).eval()
            done[name] = classifier, path, export_onnx(path, folder / f"{name}.onnx", size)
        return done[name]

    return get


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n == "plain-none-zero" else pytest.mark.slow) for n in CONFIGS]
)  # each export takes 5-15 s; the bundle test in test_deploy.py covers gates + TTA + offsets by default
def test_onnx_decides_as_torch(exports, name):
    classifier, path, out = exports(name)
    _, tta, offsets, size = CONFIGS[name]
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["probs", "scores"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch, not a fixed one
    assert not list(out.parent.glob(f"{out.name}.data"))  # one self-contained file
    # the caller's model is untouched: still channels_last, still on its weights
    assert classifier.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert path.tta == (tta == "hflip")

    member = OnnxMember(out)
    assert (member.image_size, member.num_classes) == (size, len(CLASSES))
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 5):
        x = torch.randn(batch, 1, size, size, generator=generator)
        with torch.no_grad():
            want_probs, want_scores = (t.numpy() for t in path(x))
        probs, scores = member(x.numpy())
        assert probs.shape == scores.shape == (batch, len(CLASSES))
        assert probs.dtype == scores.dtype == np.float32
        diff = max(np.abs(probs - want_probs).max(), np.abs(scores - want_scores).max())
        print(f"{name} batch {batch}: max abs diff {diff:.2e}")
        assert diff < TOLERANCE, (name, batch, diff)
        assert (probs.argmax(1) == want_probs.argmax(1)).all()
        assert (scores.argmax(1) == want_scores.argmax(1)).all()
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        # the offsets live in the graph: probs move away from scores exactly when there are offsets
        if offsets is None:
            np.testing.assert_allclose(probs, scores, atol=1e-6)
        else:
            assert np.abs(probs - scores).max() > 1e-3
            with torch.no_grad():
                decided = classifier.predict_proba(x).numpy()
            assert np.abs(probs - decided).max() < TOLERANCE  # and equal the classifier's own decision


def test_onnx_batch_axis_takes_any_size(exports):
    _, path, out = exports("plain-none-zero")
    member = OnnxMember(out)
    x = torch.randn(3, 1, 32, 32)
    probs, _ = member(x.numpy())
    # each row is the row of a batch of one (no batch-size-dependent graph)
    alone = np.concatenate([member(x[i : i + 1].numpy())[0] for i in range(3)])
    assert np.abs(probs - alone).max() < TOLERANCE
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        member(np.zeros((2, 1, 48, 48), np.float32))


def _one_line_naming(err: pytest.ExceptionInfo, path) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    assert "Traceback" not in message and "[ONNXRuntimeError]" not in message, message
    return message


def test_bad_onnx_files_are_data_errors(exports, tmp_path):
    _, _, out = exports("plain-none-zero")
    data = out.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.onnx"
    text.write_text("these are not the weights you are looking for\n")
    for bad in (truncated, text):
        with pytest.raises(DataError) as err:
            OnnxMember(bad)
        assert "not a readable ONNX model" in _one_line_naming(err, bad)
    missing = tmp_path / "missing.onnx"
    with pytest.raises(DataError) as err:
        OnnxMember(missing)
    assert "no such" in _one_line_naming(err, missing)


def test_other_onnx_models_are_refused(tmp_path):
    """A valid ONNX file that is not a decision-path export (other names) says so, in one line."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "other", [x], [y])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), other)
    with pytest.raises(DataError) as err:
        OnnxMember(other)
    assert "not a skintumor decision-path export" in _one_line_naming(err, other)
