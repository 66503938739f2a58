"""DINO self-supervised pretraining (Caron et al., 2021): a real teacher where none can be downloaded.

Student and EMA teacher ViTs with projection heads; 2 global + N local crops; the teacher
sees only the global crops; its output is centered and sharpened; the teacher temperature
warms up and the EMA momentum follows a cosine to 1; weight decay follows a cosine too; the
head's last layer stays frozen during the first epoch(s).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import transforms as T

from edgedistill.config import Config, auto_local_crop_size
from edgedistill.losses.dino import dino_loss, teacher_temperature, update_center
from edgedistill.models.backbone_io import save_backbone
from edgedistill.models.projector import DINOHead, cancel_last_layer_gradients
from edgedistill.models.vit import create_vit, default_patch_size
from edgedistill.train.loop import Task
from edgedistill.train.schedule import cosine


class BackboneWithHead(nn.Module):
    """Runs every crop through the backbone (one pass per resolution) and the head."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """crops: list of (B,3,h,w), same-size crops adjacent -> (len(crops)*B, out_dim)."""
        features, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(features))


class DinoTask(Task):
    name = "pretrain"

    def __init__(self, cfg: Config, steps_per_epoch_hint: int = 0):
        p = cfg.pretrain
        self.cfg = cfg
        kwargs: dict[str, Any] = {"img_size": cfg.data.img_size}
        if p.patch_size:
            kwargs["patch_size"] = p.patch_size
        if p.depth:
            kwargs["depth"] = p.depth
        # Local crops are smaller than the global ones: timm interpolates the position
        # embedding on the fly with dynamic_img_size. The saved backbone drops that flag.
        student, self.backbone_kwargs = create_vit(p.arch, dynamic_img_size=True, drop_path_rate=p.drop_path_rate, **kwargs)
        self.backbone_kwargs = {k: v for k, v in self.backbone_kwargs.items() if k not in ("dynamic_img_size", "drop_path_rate")}
        if not torch.cuda.is_available() or cfg.run.device == "cpu":
            # On a CPU, SDPA's backward is slower than an explicit softmax at ViT token counts
            # (see distill.attention); the EMA teacher only runs inference and stays fused.
            for block in student.blocks:
                block.attn.fused_attn = False
        teacher, _ = create_vit(p.arch, dynamic_img_size=True, **kwargs)
        teacher.load_state_dict(student.state_dict())
        self.trainable = BackboneWithHead(student, DINOHead(student.embed_dim, p.out_dim, use_bn=p.head_bn))
        self.teacher = BackboneWithHead(teacher, copy.deepcopy(self.trainable.head)).requires_grad_(False)
        self.center = torch.zeros(1, p.out_dim)

    def loss(self, model: nn.Module, crops: list[torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        p = self.cfg.pretrain
        device = crops[0].device
        self.teacher.to(device)
        self.center = self.center.to(device)
        with torch.no_grad():
            teacher_out = self.teacher(crops[:2]).float()
        student_out = model(crops).float()
        temp = teacher_temperature(epoch, p.warmup_teacher_temp, p.teacher_temp, p.warmup_teacher_temp_epochs)
        loss = dino_loss(student_out, teacher_out, self.center, n_global=2,
                         student_temp=p.student_temp, teacher_temp=temp)
        self.center = update_center(self.center, teacher_out, p.center_momentum)
        return {"loss": loss}

    def before_optimizer_step(self, epoch: int) -> None:
        cancel_last_layer_gradients(self.trainable.head, epoch, self.cfg.pretrain.freeze_last_layer)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        momentum = cosine(step, total_steps, self.cfg.pretrain.momentum_teacher, 1.0)
        for ema, live in zip(self.teacher.parameters(), self.trainable.parameters()):
            ema.mul_(momentum).add_(live.detach().to(ema.dtype), alpha=1 - momentum)

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "center": self.center.cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            self.teacher.load_state_dict(state["teacher"])
            self.center = state["center"]

    def backbone(self) -> nn.Module:
        return self.teacher.backbone

    def save_outputs(self, run_dir: Path) -> None:
        save_backbone(self.teacher.backbone, run_dir, "teacher", self.cfg.pretrain.arch, self.backbone_kwargs,
                      "teacher", extra={"method": "dino", "run": self.cfg.run.name})


class PILGaussianBlur:
    """Gaussian blur with a random radius, on the PIL image (as DINO does; torchvision's
    tensor-based blur costs ~40 ms per small image on a CPU). Radius drawn from torch's RNG,
    which the data sampler seeds per item."""

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def __call__(self, image):
        from PIL import ImageFilter

        radius = self.low + (self.high - self.low) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


class MultiCrop:
    """DINO's augmentations, with crop sizes and blur kernels scaled to the image size."""

    def __init__(self, img_size: int, local_crops: int, global_scale: tuple[float, float],
                 local_scale: tuple[float, float], local_size: int, mean, std, hflip: bool = True):
        flip_color = T.Compose([
            *([T.RandomHorizontalFlip()] if hflip else []),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ])
        normalize = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

        def blur(p: float) -> T.RandomApply:
            return T.RandomApply([PILGaussianBlur(0.1 * img_size / 224, 2.0 * img_size / 224)], p=p)

        bicubic = T.InterpolationMode.BICUBIC
        self.global1 = T.Compose([T.RandomResizedCrop(img_size, scale=global_scale, interpolation=bicubic),
                                  flip_color, blur(1.0), normalize])
        self.global2 = T.Compose([T.RandomResizedCrop(img_size, scale=global_scale, interpolation=bicubic),
                                  flip_color, blur(0.1), T.RandomSolarize(128, p=0.2), normalize])
        self.local = T.Compose([T.RandomResizedCrop(local_size, scale=local_scale, interpolation=bicubic),
                                flip_color, blur(0.5), normalize])
        self.local_crops = local_crops

    def __call__(self, image) -> list[torch.Tensor]:
        return [self.global1(image), self.global2(image)] + [self.local(image) for _ in range(self.local_crops)]


def multicrop_for(cfg: Config) -> MultiCrop:
    p = cfg.pretrain
    local_size = p.local_crop_size or auto_local_crop_size(cfg.data.img_size, p.patch_size or default_patch_size(p.arch))
    return MultiCrop(cfg.data.img_size, p.local_crops, p.global_crop_scale, p.local_crop_scale,
                     local_size, cfg.data.mean, cfg.data.std, hflip=cfg.data.hflip)
