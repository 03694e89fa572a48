import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18

from skintumor.errors import WeightsError
from skintumor.models import AttentionGatedResNet18, FocalLoss, GridAttentionGate, inverse_frequency_alpha


@pytest.mark.parametrize("size", [64, 128, 224])
def test_output_and_attention_shapes(size):
    model = AttentionGatedResNet18(num_classes=3).eval()
    x = torch.randn(2, 1, size, size)
    logits = model(x)
    assert logits.shape == (2, 3)
    maps = model.attention_maps(x)
    assert set(maps) == {"gate2", "gate3"}
    for m in maps.values():
        assert m.shape == (2, 1, size, size)
        assert m.min() >= 0 and m.max() <= 1
    out = model.forward_details(x)
    assert out.attention["gate2"].shape[-1] == size // 8 and out.attention["gate3"].shape[-1] == size // 16


def test_gates_off_is_resnet18_less_the_heads():
    ours = AttentionGatedResNet18(num_classes=3, attention=False)
    ref = resnet18(num_classes=3)
    n = lambda m, skip: sum(p.numel() for k, p in m.named_parameters() if not k.startswith(skip))
    # torchvision's conv1 takes 3 channels, ours 1: 64*7*7*2 fewer weights
    assert n(ours, "fc.") == n(ref, "fc.") - 64 * 7 * 7 * 2
    assert not hasattr(ours, "gate2")


def test_sigmoid_gate_is_not_pinned():
    torch.manual_seed(0)
    x, g = torch.randn(2, 16, 8, 8), torch.randn(2, 32, 2, 2)
    sig = GridAttentionGate(16, 32)
    with torch.no_grad():
        sig.psi.weight.mul_(50)  # a decisive gate must be able to reach near 0 and near 1
    alpha = sig.attention(x, g)
    assert alpha.min() < 0.1 and alpha.max() > 0.9


def test_local_weights_file_loads_with_conv1_averaged(tmp_path):
    ref = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = AttentionGatedResNet18(num_classes=3, weights_path=str(path))
    assert torch.allclose(model.conv1.weight, ref.conv1.weight.mean(dim=1, keepdim=True))
    assert torch.equal(model.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)


def test_focal_loss_equals_cross_entropy_at_gamma_zero():
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target), atol=1e-6)
    smooth = FocalLoss(gamma=0.0, label_smoothing=0.1)(logits, target)
    assert torch.allclose(smooth, F.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)


def test_focal_loss_down_weights_easy_examples_and_alpha_weights_classes():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.2, 0.0, 0.0]])
    target = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, target, reduction="none")
    fl = torch.stack([FocalLoss(gamma=2.0)(logits[i : i + 1], target[i : i + 1]) for i in range(2)])
    assert (fl / ce)[0] < (fl / ce)[1]  # the confident example is discounted more
    alpha = FocalLoss(gamma=0.0, alpha=[1.0, 1.0, 3.0])
    assert torch.allclose(alpha(logits[:1], torch.tensor([2])), 3 * F.cross_entropy(logits[:1], torch.tensor([2])))


def test_inverse_frequency_alpha_gives_rarest_class_most_weight():
    alpha = inverse_frequency_alpha([149, 74, 32])
    assert alpha[2] > alpha[1] > alpha[0]
    assert sum(alpha) == pytest.approx(3.0)


def test_unusable_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        AttentionGatedResNet18(weights_path=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("not torch")
    with pytest.raises(WeightsError, match="junk.pth: not a readable weights file"):
        AttentionGatedResNet18(weights_path=str(tmp_path / "junk.pth"))
    torch.save({"fc.weight": torch.zeros(3, 512)}, tmp_path / "heads_only.pth")
    with pytest.raises(WeightsError, match="no ResNet trunk weights"):
        AttentionGatedResNet18(weights_path=str(tmp_path / "heads_only.pth"))
