"""Models: the attention-gated ResNet18 of the study, its plain baseline, focal loss, Lightning module."""

from skintumor.models.attention_resnet import AttentionGatedResNet18, ModelOutput
from skintumor.models.gates import GridAttentionGate
from skintumor.models.losses import FocalLoss, inverse_frequency_alpha

__all__ = ["AttentionGatedResNet18", "ModelOutput", "GridAttentionGate", "FocalLoss", "inverse_frequency_alpha"]
