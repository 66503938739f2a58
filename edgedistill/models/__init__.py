"""Models: timm ViT backbones, attention capture, teacher sources and checkpoint formats (design.md §3).

- ``vit``: ``create_vit``, ``forward_with_cls_attention`` (last-block CLS attention, no hooks;
  ``VisionTransformer`` and RoPE ``Eva``/DINOv3 models), ``forward_cls``.
- ``cls_attention``: one block re-run from its submodules with the CLS query's attention row.
- ``checkpoints``: safe reading (no pickle code) and strict loading of DINO/MAE/Mugs/MSN/iBOT/timm
  layouts; ``release_layouts``: the DINOv2/DINOv3 release names mapped to timm's;
  ``pos_embed``: each family's position-embedding semantics (DINOv2's interpolation, DINOv3's
  stored RoPE periods).
- ``teacher``: ``load_teacher`` for ``--teacher`` (random, run dir, file, hub name).
- ``backbone_io``: ``save_backbone``/``load_backbone`` (``<name>.safetensors`` + ``<name>.json``).
- ``projector``: the AttnDistill projector and the DINO head.
"""

from edgedistill.models.backbone_io import load_backbone, save_backbone
from edgedistill.models.checkpoints import load_backbone_strict, load_checkpoint_into, read_state_dict
from edgedistill.models.teacher import load_teacher
from edgedistill.models.vit import create_vit, forward_cls, forward_with_cls_attention, vit_kwargs

__all__ = [
    "create_vit",
    "vit_kwargs",
    "forward_with_cls_attention",
    "forward_cls",
    "read_state_dict",
    "load_backbone_strict",
    "load_checkpoint_into",
    "load_teacher",
    "save_backbone",
    "load_backbone",
]
