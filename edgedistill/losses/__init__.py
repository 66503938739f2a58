"""Losses as pure functions on tensors: AttnDistill and its dense term (design.md §4), DINO (design.md §5)."""

from edgedistill.losses.attndistill import (
    aggregate_heads,
    attention_kl,
    attndistill_loss,
    cls_loss,
    resize_attention,
)
from edgedistill.losses.dino import dino_loss, teacher_temperature, update_center
from edgedistill.losses.patch import patch_loss, patch_tokens, resize_patch_tokens

__all__ = [
    "aggregate_heads",
    "attention_kl",
    "attndistill_loss",
    "cls_loss",
    "resize_attention",
    "dino_loss",
    "teacher_temperature",
    "update_center",
    "patch_loss",
    "patch_tokens",
    "resize_patch_tokens",
]
