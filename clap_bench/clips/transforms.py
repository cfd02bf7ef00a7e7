"""Clip transforms of the TSP protocol: crop (+ flip when training), Kinetics mean/std.

Frames arrive already resized (the decoder scales them to ``ClipConfig.resize``, 128x171 in the
paper). Training takes a random ``crop`` x ``crop`` window and flips it horizontally with
probability 0.5, the same window and flip for every frame of a clip; evaluation takes the
centre window, placed as TSP's ``center_crop`` places it (``round(margin / 2)``: 30 columns left of
112 in 171, 29 right). Crop and flip work on the uint8 frames; one strided copy per clip turns the
window into float in the encoders' layout, then one in-place pass normalises, giving
``(3, T, crop, crop)`` per clip.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_uint8_tensor(frames: ArrayLike) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if tensor.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {tensor.dtype}")
    if tensor.dim() < 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (..., T, H, W, 3), got {tuple(tensor.shape)}")
    return tensor


def crop_offsets(
    height: int, width: int, crop: int, train: bool, generator: Optional[torch.Generator], hflip: bool = True
) -> tuple[int, int, bool]:
    """(top, left, flip) of one clip's crop window; ``hflip=False`` never flips (the draw is still made,
    so the crop windows do not depend on it)."""
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} is larger than the frames ({height}x{width}); resize must be >= crop")
    if not train:  # TSP's center_crop (and torchvision's): an odd margin rounds half to even
        return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0)), False
    top = int(torch.randint(0, height - crop + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - crop + 1, (1,), generator=generator))
    flip = bool(torch.rand((), generator=generator) < 0.5) and hflip
    return top, left, flip


def _affine(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with (x/255 - mean)/std == x*scale - shift, shaped to broadcast on (3, T, H, W)."""
    shape = (3, 1, 1, 1)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).view(shape)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32).view(shape)
    return scale, shift


def normalize(clips_uint8: torch.Tensor, mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD) -> torch.Tensor:
    """uint8 ``(..., T, H, W, 3)`` -> float ``(..., 3, T, H, W)``, (x/255 - mean) / std per channel."""
    x = clips_uint8.movedim(-1, -4).contiguous().float()  # (..., 3, T, H, W), contiguous
    scale, shift = _affine(mean, std)
    return x.mul_(scale).sub_(shift)


def transform_clips(
    clips: ArrayLike,
    crop: int,
    train: bool,
    generator: Optional[torch.Generator] = None,
    mean: Sequence[float] = KINETICS_MEAN,
    std: Sequence[float] = KINETICS_STD,
    hflip: bool = True,
) -> torch.Tensor:
    """uint8 clips ``(K, T, H, W, 3)`` (or one clip ``(T, H, W, 3)``) -> float ``(K, 3, T, crop, crop)``.

    Each clip gets its own crop window and flip (training, unless ``hflip=False``) from ``generator``.
    """
    tensor = _as_uint8_tensor(clips)
    single = tensor.dim() == 4
    if single:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 5:
        raise ValueError(f"expected clips shaped (K, T, H, W, 3), got {tuple(tensor.shape)}")
    k, frames, height, width = (int(d) for d in tensor.shape[:4])
    # One strided copy per clip does crop, channel move and uint8 -> float together.
    result = torch.empty((k, 3, frames, crop, crop), dtype=torch.float32)
    for i, clip in enumerate(tensor):
        top, left, flip = crop_offsets(height, width, crop, train, generator, hflip)
        window = clip[:, top : top + crop, left : left + crop, :]
        if flip:
            window = window.flip(2)  # width axis of (T, H, W, 3)
        result[i].copy_(window.permute(3, 0, 1, 2))
    scale, shift = _affine(mean, std)
    result.mul_(scale).sub_(shift)
    return result[0] if single else result


class ClipTransform:
    """``transform_clips`` with its settings fixed, for a dataset: ``ClipTransform(crop, train)``."""

    def __init__(self, crop: int, train: bool, mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD):
        self.crop, self.train, self.mean, self.std = int(crop), bool(train), tuple(mean), tuple(std)

    def __call__(self, clips: ArrayLike, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return transform_clips(clips, self.crop, self.train, generator, self.mean, self.std)

    def __repr__(self) -> str:
        return f"ClipTransform(crop={self.crop}, train={self.train})"
