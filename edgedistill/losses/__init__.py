"""Losses as pure functions on tensors: AttnDistill and DINO."""

from edgedistill.losses.attndistill import (
    aggregate_heads,
    attention_kl,
    attndistill_loss,
    cls_loss,
    resize_attention,
)
from edgedistill.losses.dino import dino_loss, teacher_temperature, update_center

__all__ = [
    "aggregate_heads",
    "attention_kl",
    "attndistill_loss",
    "cls_loss",
    "resize_attention",
    "dino_loss",
    "teacher_temperature",
    "update_center",
]
