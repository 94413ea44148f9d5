"""CLIPImageProcessor without torch or transformers: PIL resize, centre crop, rescale, normalise -> NCHW float32.

Reads `preprocessor_config.json` from an HF folder when given; otherwise LLaVA-1.5's CLIP defaults (336 px).
`pad_to_square` (LLaVA-1.5's original code pads to square with the mean colour first) is a switch; it is also
honoured from the processor config's `do_pad`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image

from vkd_jax.errors import CheckpointError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    shortest_edge: int | None = 336
    resize_hw: tuple[int, int] | None = None  # size={"height","width"} instead of shortest_edge
    crop_hw: tuple[int, int] = (336, 336)
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    resample: int = 3  # PIL bicubic
    do_convert_rgb: bool = True
    pad_to_square: bool = False

    @classmethod
    def from_dict(cls, d: dict, source: str = "preprocessor_config.json") -> ImageProcessorConfig:
        kw: dict[str, Any] = {}
        size = d.get("size")
        if isinstance(size, int):
            kw["shortest_edge"] = size
        elif isinstance(size, dict):
            if "shortest_edge" in size:
                kw["shortest_edge"] = int(size["shortest_edge"])
            elif "height" in size and "width" in size:
                kw["shortest_edge"], kw["resize_hw"] = None, (int(size["height"]), int(size["width"]))
            else:
                raise CheckpointError(f"{source}: field 'size' needs 'shortest_edge' or 'height'/'width', got {size}")
        crop = d.get("crop_size")
        if isinstance(crop, int):
            kw["crop_hw"] = (crop, crop)
        elif isinstance(crop, dict):
            kw["crop_hw"] = (int(crop["height"]), int(crop["width"]))
        for f in ("do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize", "resample",
                  "do_convert_rgb"):
            if d.get(f) is not None:
                kw[f] = d[f]
        for f in ("image_mean", "image_std"):
            if d.get(f) is not None:
                v = d[f]
                kw[f] = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))
        if d.get("do_pad") is not None:
            kw["pad_to_square"] = bool(d["do_pad"])
        return cls(**kw)

    def to_hf_dict(self) -> dict:
        """The preprocessor_config.json that CLIPImageProcessor reads back as this config."""
        size = {"shortest_edge": self.shortest_edge} if self.resize_hw is None else \
            {"height": self.resize_hw[0], "width": self.resize_hw[1]}
        return {"image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor", "size": size,
                "crop_size": {"height": self.crop_hw[0], "width": self.crop_hw[1]}, "do_resize": self.do_resize,
                "do_center_crop": self.do_center_crop, "do_rescale": self.do_rescale,
                "rescale_factor": self.rescale_factor, "do_normalize": self.do_normalize,
                "image_mean": list(self.image_mean), "image_std": list(self.image_std), "resample": self.resample,
                "do_convert_rgb": self.do_convert_rgb, **({"do_pad": True} if self.pad_to_square else {})}

    @classmethod
    def from_hf_dir(cls, hf_dir: str | os.PathLike, **overrides) -> ImageProcessorConfig:
        path = os.path.join(os.fspath(hf_dir), "preprocessor_config.json")
        if not os.path.isfile(path):
            return dataclasses.replace(cls(), **overrides)
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        return dataclasses.replace(cls.from_dict(d, path), **overrides)


def _to_pil(img) -> Image.Image:
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, (bytes, bytearray, memoryview)):
        im = Image.open(io.BytesIO(bytes(img)))
        im.load()
        return im
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8 HWC, got dtype {arr.dtype}")
    return Image.fromarray(arr)


def _pad_to_square(im: Image.Image, mean) -> Image.Image:
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    out = Image.new(im.mode, (side, side), tuple(int(x * 255) for x in mean))
    out.paste(im, ((side - w) // 2, (side - h) // 2))
    return out


def _resize_size(w: int, h: int, cfg: ImageProcessorConfig) -> tuple[int, int]:
    if cfg.resize_hw is not None:
        return cfg.resize_hw
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)  # (height, width)


def _center_crop(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """HWC centre crop, zero-padding when the image is smaller than the crop (as HF does)."""
    h, w = arr.shape[:2]
    ch, cw = hw
    if h < ch or w < cw:
        ph, pw = max(ch, h), max(cw, w)
        padded = np.zeros((ph, pw) + arr.shape[2:], arr.dtype)
        top, left = (ph - h) // 2, (pw - w) // 2
        padded[top:top + h, left:left + w] = arr
        arr, h, w = padded, ph, pw
    top, left = (h - ch) // 2, (w - cw) // 2
    return arr[top:top + ch, left:left + cw]


def preprocess_one(img, cfg: ImageProcessorConfig) -> np.ndarray:
    im = _to_pil(img)
    if cfg.do_convert_rgb and im.mode != "RGB":
        im = im.convert("RGB")
    if cfg.pad_to_square:
        im = _pad_to_square(im, cfg.image_mean)
    if cfg.do_resize:
        h, w = _resize_size(im.size[0], im.size[1], cfg)
        im = im.resize((w, h), resample=cfg.resample)
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if cfg.do_center_crop:
        arr = _center_crop(arr, cfg.crop_hw)
    x = arr.astype(np.float64)
    if cfg.do_rescale:
        x = x * cfg.rescale_factor
    x = x.astype(np.float32)
    if cfg.do_normalize:
        x = (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess_images(images: Iterable, hf_dir: str | os.PathLike | ImageProcessorConfig | None = None,
                      **overrides) -> np.ndarray:
    """Images (PIL, uint8 HWC arrays, or encoded bytes) -> pixel_values [N, 3, H, W] float32, the values
    CLIPImageProcessor gives. `hf_dir` is an HF folder (its preprocessor_config.json), a config, or None."""
    if isinstance(hf_dir, ImageProcessorConfig):
        cfg = dataclasses.replace(hf_dir, **overrides)
    elif hf_dir is None:
        cfg = ImageProcessorConfig(**overrides)
    else:
        cfg = ImageProcessorConfig.from_hf_dir(hf_dir, **overrides)
    if isinstance(images, (Image.Image, bytes, np.ndarray)) and not (
            isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    out = [preprocess_one(im, cfg) for im in images]
    if not out:
        return np.zeros((0, 3) + tuple(cfg.crop_hw), np.float32)
    return np.stack(out)
