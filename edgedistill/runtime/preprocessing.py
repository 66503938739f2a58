"""The eval transform in numpy + Pillow, from a bundle manifest's ``preprocessing`` dict.

It reproduces torchvision's ``Resize(resize, bicubic, antialias=True) + CenterCrop(crop) +
ToTensor() + Normalize(mean, std)`` on PIL images bit for bit: torchvision resizes PIL images
with PIL itself, and the size rules below are copied from it:

* short-side resize: the short side becomes ``resize``, the long side ``int(resize * long / short)``
  (truncated, not rounded);
* center crop: offsets ``int(round((size - crop) / 2))`` (Python's banker's rounding), zero
  padding first when the image is smaller than the crop;
* ``ToTensor``: uint8 / 255 in float32, then ``(x - mean) / std`` in float32.

Spec keys (``resize``, ``crop``, ``mean``, ``std`` required)::

    {"resize": 37, "crop": 32, "interpolation": "bicubic", "mean": [..3], "std": [..3],
     "channel_order": "RGB", "layout": "NCHW", "dtype": "float32", "scale": 0.00392156862745098}

``resize`` may also be ``[h, w]`` (exact size) or null (no resize); ``crop`` an int or ``[h, w]``;
``scale`` a number or a string like ``"1/255"``.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence, TypedDict, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgedistill.errors import EdgeDistillError
from edgedistill.limits import MAX_IMAGE_SIDE

__all__ = ["preprocess", "preprocess_batch", "load_rgb", "resized_size", "center_crop_box",
           "validate_spec", "PreprocessSpec", "check_image_size", "INTERPOLATIONS", "MAX_PIXELS", "MAX_ASPECT"]

# Decoded-size bounds, checked on the header before decoding. Pillow's own bomb check counts
# pixels only: a 1 x 2,000,000 1-bit PNG (321 bytes) passes it, and resizing its short side to
# 37 px then asks for 37 x 74M pixels. Bounding the aspect ratio bounds every resize.
MAX_PIXELS = 120_000_000  # above a 100-megapixel camera's frames
MAX_ASPECT = 50  # wider than any panorama worth embedding; a 1 x N strip is not a picture

ImageLike = Union[Image.Image, str, os.PathLike]

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _pair(value: Any, key: str, limit: int = MAX_IMAGE_SIDE) -> tuple[int, int]:
    """An int or a [h, w] pair -> (h, w), each side in 1..limit."""
    if isinstance(value, bool):
        raise EdgeDistillError(f"preprocessing.{key} must be an int or [height, width], got {value!r}")
    if isinstance(value, (int, np.integer)):
        h = w = int(value)
    elif isinstance(value, (list, tuple)) and len(value) in (1, 2) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        h, w = int(value[0]), int(value[-1])
    else:
        raise EdgeDistillError(f"preprocessing.{key} must be an int or [height, width], got {value!r}")
    if h < 1 or w < 1:
        raise EdgeDistillError(f"preprocessing.{key} must be positive, got {value!r}")
    if h > limit or w > limit:
        raise EdgeDistillError(f"preprocessing.{key} {value!r} is larger than {limit} px")
    return h, w


def _scale(value: Any) -> float:
    if isinstance(value, str):
        try:
            scale = float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise EdgeDistillError(f"preprocessing.scale must be a number like 1/255, got {value!r}") from None
        if scale > 0:
            return scale
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    raise EdgeDistillError(f"preprocessing.scale must be a positive number, got {value!r}")


class PreprocessSpec(TypedDict):
    """A preprocessing spec, normalized (:func:`validate_spec`): what :func:`preprocess` takes,
    the manifest's ``preprocessing`` (``runtime.manifest.Preprocessing``) with defaults filled in."""

    resize: int | list[int] | None  # short side, [h, w], or no resize
    crop: list[int]  # [h, w]
    interpolation: str
    mean: list[float]
    std: list[float]
    channel_order: str  # RGB | BGR
    layout: str  # NCHW | NHWC
    dtype: str  # float32 | float16
    scale: float


def validate_spec(spec: Mapping[str, Any]) -> PreprocessSpec:
    """Check a preprocessing mapping and return it normalized (defaults filled in)."""
    if not isinstance(spec, Mapping):
        raise EdgeDistillError("preprocessing must be a mapping")
    missing = [k for k in ("resize", "crop", "mean", "std") if k not in spec]
    if missing:
        raise EdgeDistillError(f"preprocessing lacks {', '.join(missing)}")
    out: dict[str, Any] = {}  # becomes the PreprocessSpec
    resize = spec["resize"]
    if resize is None or resize == 0:
        out["resize"] = None
    elif isinstance(resize, (list, tuple)) and len(resize) == 2:
        out["resize"] = list(_pair(resize, "resize", 2 * MAX_IMAGE_SIDE))
    else:
        out["resize"] = _pair(resize, "resize", 2 * MAX_IMAGE_SIDE)[0]
    out["crop"] = list(_pair(spec["crop"], "crop"))
    interp = str(spec.get("interpolation", "bicubic")).lower()
    if interp not in INTERPOLATIONS:
        raise EdgeDistillError(f"preprocessing.interpolation {interp!r} is not one of {', '.join(INTERPOLATIONS)}")
    out["interpolation"] = interp
    for key in ("mean", "std"):
        values = spec[key]
        if (not isinstance(values, (list, tuple)) or len(values) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise EdgeDistillError(f"preprocessing.{key} must be 3 numbers, got {values!r}")
        out[key] = [float(v) for v in values]
        # JSON's NaN and Infinity parse in Python: the model would get finite but wrong pixels
        if not all(math.isfinite(v) for v in out[key]):
            raise EdgeDistillError(f"preprocessing.{key} must be finite numbers, got {out[key]}")
    if not min(out["std"]) > 0:
        raise EdgeDistillError(f"preprocessing.std must be positive, got {out['std']}")
    order = str(spec.get("channel_order", "RGB")).upper()
    if order not in ("RGB", "BGR"):
        raise EdgeDistillError(f"preprocessing.channel_order must be RGB or BGR, got {order!r}")
    out["channel_order"] = order
    layout = str(spec.get("layout", "NCHW")).upper()
    if layout not in ("NCHW", "NHWC"):
        raise EdgeDistillError(f"preprocessing.layout must be NCHW or NHWC, got {layout!r}")
    out["layout"] = layout
    dtype = str(spec.get("dtype", "float32")).lower()
    if dtype not in ("float32", "float16"):
        raise EdgeDistillError(f"preprocessing.dtype must be float32 or float16, got {dtype!r}")
    out["dtype"] = dtype
    out["scale"] = _scale(spec.get("scale", 1 / 255))
    return PreprocessSpec(**out)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (alpha dropped; 16-bit scaled by 1/257, not clipped).

    The one conversion used everywhere (training data, eval, export gates, runtime), so that
    an app sees the pixels the model was validated on."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() > 255:  # 16-bit range (an "I" PNG from some encoders)
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # same pixels as a direct convert, minus PIL's UserWarning
    return img.convert("RGB")


def check_image_size(width: int, height: int) -> str | None:
    """Why an image of this size is refused (None: accepted): more than ``MAX_PIXELS``, or an
    aspect ratio above ``MAX_ASPECT``, which no resize could keep within memory."""
    if width < 1 or height < 1:
        return f"{width}x{height} pixels is empty"
    if width * height > MAX_PIXELS:
        return f"{width}x{height} pixels is more than {MAX_PIXELS:,}"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"{width}x{height} pixels has an aspect ratio above {MAX_ASPECT}:1"
    return None


def load_rgb(image: ImageLike) -> Image.Image:
    """A PIL image from a path or an image: EXIF orientation applied (phone photos), then RGB.
    An image past the size bounds (``check_image_size``) is refused before it is decoded."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    path = Path(image)
    try:
        with Image.open(path) as handle:
            refused = check_image_size(*handle.size)
            if refused:
                raise EdgeDistillError(f"image {path} is too large to decode: {refused}")
            handle.load()
            return to_rgb(ImageOps.exif_transpose(handle))
    except FileNotFoundError:
        raise EdgeDistillError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise EdgeDistillError(f"cannot read image {path}: {exc}") from None


def resized_size(width: int, height: int, size: int | Sequence[int]) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(size): an int resizes the short side."""
    if isinstance(size, (list, tuple)):
        return int(size[1]), int(size[0])
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = int(size), int(int(size) * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """(left, top) of torchvision's CenterCrop on an image at least as large as the crop."""
    return int(round((width - crop_w) / 2.0)), int(round((height - crop_h) / 2.0))


def _center_crop(img: Image.Image, crop_h: int, crop_w: int) -> Image.Image:
    width, height = img.size
    if crop_w > width or crop_h > height:
        # torchvision pads with zeros (left/top get the floor half), then crops
        pad_l = (crop_w - width) // 2 if crop_w > width else 0
        pad_t = (crop_h - height) // 2 if crop_h > height else 0
        pad_r = (crop_w - width + 1) // 2 if crop_w > width else 0
        pad_b = (crop_h - height + 1) // 2 if crop_h > height else 0
        canvas = Image.new(img.mode, (width + pad_l + pad_r, height + pad_t + pad_b), 0)
        canvas.paste(img, (pad_l, pad_t))
        img = canvas
        width, height = img.size
        if (width, height) == (crop_w, crop_h):
            return img
    left, top = center_crop_box(width, height, crop_h, crop_w)
    return img.crop((left, top, left + crop_w, top + crop_h))


def preprocess(image: ImageLike, spec: Mapping[str, Any]) -> np.ndarray:
    """One image (PIL or path) -> (3, H, W) float32 (or (H, W, 3) for layout NHWC)."""
    spec = validate_spec(spec)
    img = load_rgb(image)
    if spec["resize"] is not None:
        size = resized_size(img.width, img.height, spec["resize"])
        if size != img.size:
            img = img.resize(size, INTERPOLATIONS[spec["interpolation"]])
    crop_h, crop_w = spec["crop"]
    img = _center_crop(img, crop_h, crop_w)
    x = np.asarray(img, dtype=np.uint8).astype(np.float32)  # (H, W, 3)
    # divide by 255 rather than multiply by 1/255: that is what ToTensor does, bit for bit
    x = x / np.float32(1.0 / spec["scale"])
    x = (x - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    if spec["channel_order"] == "BGR":
        x = x[..., ::-1]
    if spec["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.dtype(spec["dtype"]))


def preprocess_batch(images: Sequence[ImageLike], spec: Mapping[str, Any]) -> np.ndarray:
    """Several images (PIL or paths) -> (B, 3, H, W) float32 (or (B, H, W, 3) for NHWC)."""
    if len(images) == 0:
        raise EdgeDistillError("preprocess_batch got no images")
    return np.stack([preprocess(image, spec) for image in images])
