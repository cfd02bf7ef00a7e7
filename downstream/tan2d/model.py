"""The 2D temporal adjacent network (2D-TAN, Zhang et al., AAAI 2020), re-implemented.

Pipeline for one (video, sentence) pair:

* ``FrameAvgPool``: 1x1 conv + ReLU over the resampled features, then average pooling down to
  ``N`` clips.
* ``sparse_map_mask`` / ``sparse_max_pool_map``: the 2D temporal map. Cell ``(i, j)`` (``j >= i``)
  stands for the moment from the start of clip ``i`` to the end of clip ``j``; its feature is the
  max over clips ``i..j``. Only a sparse set of cells is kept (2D-TAN's SparsePropMaxPool): with
  ``num_scale_layers = [L0, L1, ...]`` the first scale keeps every start and lengths ``0..L0-1``
  (in clips, ``j - i``); each further scale doubles the start stride ``s`` and keeps
  ``L_k`` lengths ``o_k, o_k + s, ...`` where ``o_k`` continues after the previous scale
  (``o_{k+1} = o_k + s_k * (L_k + 1)``). Charades-STA uses ``N = 16, [16]``: every cell with
  ``j >= i``. TACoS uses ``N = 128, [16, 8, 8, 8]``.
* ``SentenceFusion``: a 3-layer LSTM over the word vectors, its hidden state at the last word,
  a linear map, multiplied into a 1x1 conv of the map, L2-normalised over channels, masked.
* ``MapConv``: 8 conv layers (kernel 5; padding 16 in the first, 0 after, so the size returns to
  ``N``), ReLU, each output rescaled by 1 / (number of valid map cells under the kernel) and the
  valid area grown as the kernel covers it.
* a 1x1 conv to one score per cell; ``sigmoid`` of it, masked, is the predicted IoU.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------- the sparse 2D map
def sparse_map_mask(num_clips: int, num_scale_layers: Sequence[int]) -> torch.Tensor:
    """Boolean ``(N, N)`` mask of the cells ``(start, end)`` the sparse map keeps.

    Raises ``ValueError`` when a scale contributes no cell (the layout does not fit ``N`` clips).
    """
    if num_clips < 1 or not num_scale_layers or any(n < 1 for n in num_scale_layers):
        raise ValueError(f"invalid 2D map layout: num_clips={num_clips}, num_scale_layers={list(num_scale_layers)}")
    mask = torch.zeros(num_clips, num_clips, dtype=torch.bool)
    stride, offset = 1, 0
    for scale, layers in enumerate(num_scale_layers):
        if scale > 0:
            stride *= 2
        added = 0
        for k in range(layers):
            length = offset + k * stride  # end - start, in clips
            starts = torch.arange(0, max(0, num_clips - length), stride)
            mask[starts, starts + length] = True
            added += len(starts)
        if added == 0:
            raise ValueError(
                f"2D map layout num_scale_layers={list(num_scale_layers)} does not fit {num_clips} clips: "
                f"scale {scale} (start stride {stride}, first length {offset + 1} clips) has no cell; "
                "use fewer scales or more clips"
            )
        offset += stride * (layers + 1)
    return mask


def sparse_max_pool_map(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, C, N)`` clip features -> ``(B, C, N, N)`` map, cell ``(i, j)`` = max of clips ``i..j`` where ``mask``."""
    batch, channels, n = x.shape
    if mask.shape != (n, n):
        raise ValueError(f"map mask of shape {tuple(mask.shape)} does not match {n} clips")
    diag = [bool(torch.diagonal(mask, offset=d).any()) for d in range(n)]  # lengths the map keeps
    longest = max((d for d in range(n) if diag[d]), default=-1)
    out = x.new_zeros(batch, channels, n, n)
    running = x
    for d in range(longest + 1):
        if d > 0:
            running = torch.maximum(running[..., :-1], x[..., d:])  # max over d + 1 consecutive clips
        if diag[d]:
            out.diagonal(offset=d, dim1=2, dim2=3).copy_(running)
    return out * mask.to(x.dtype)


# --------------------------------------------------------------------------- modules
class FrameAvgPool(nn.Module):
    """``(B, D, S)`` resampled features -> ``(B, H, S // stride)`` clips: 1x1 conv, ReLU, average pool."""

    def __init__(self, input_size: int, hidden_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv1d(input_size, hidden_size, kernel_size=1)
        self.pool = nn.AvgPool1d(kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.proj(x)))


class SentenceFusion(nn.Module):
    """Sentence vector (LSTM state at the last word) times the projected map, L2-normalised, masked."""

    def __init__(self, word_size: int, text_hidden_size: int, hidden_size: int, lstm_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(word_size, text_hidden_size, num_layers=lstm_layers, batch_first=True)
        self.text_proj = nn.Linear(text_hidden_size, hidden_size)
        self.map_proj = nn.Conv2d(hidden_size, hidden_size, kernel_size=1)

    def encode_sentence(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # A forward LSTM's output at the last real word does not see the padding after it.
        states, _ = self.lstm(words)
        last = states[torch.arange(words.shape[0], device=words.device), lengths.to(words.device) - 1]
        return self.text_proj(last)

    def forward(self, words, lengths, map_h, map_mask):
        sentence = self.encode_sentence(words, lengths)[:, :, None, None]
        return F.normalize(sentence * self.map_proj(map_h), dim=1) * map_mask


def map_conv_output_size(size: int, kernel_sizes, paddings, dilations) -> int:
    for k, p, d in zip(kernel_sizes, paddings, dilations):
        size = size + 2 * p - d * (k - 1)
    return size


class MapConv(nn.Module):
    """Stacked 2D convs over the temporal map, each output reweighted by the valid cells it saw."""

    def __init__(self, input_size: int, hidden_sizes: Sequence[int], kernel_sizes: Sequence[int],
                 paddings: Sequence[int], dilations: Sequence[int]):
        super().__init__()
        if not (len(hidden_sizes) == len(kernel_sizes) == len(paddings) == len(dilations)):
            raise ValueError(
                "MapConv: hidden_sizes, kernel_sizes, paddings and dilations must have one entry per layer; got "
                f"{len(hidden_sizes)}, {len(kernel_sizes)}, {len(paddings)}, {len(dilations)}"
            )
        sizes = [input_size, *hidden_sizes]
        self.convs = nn.ModuleList(
            nn.Conv2d(sizes[i], sizes[i + 1], kernel_sizes[i], stride=1, padding=paddings[i], dilation=dilations[i])
            for i in range(len(hidden_sizes))
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = mask.to(x.dtype)
        for conv in self.convs:
            x = torch.relu(conv(x))
            ones = x.new_ones(1, 1, *conv.kernel_size)
            counts = torch.round(F.conv2d(valid, ones, padding=conv.padding, dilation=conv.dilation))
            weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
            valid = (counts > 0).to(x.dtype)
            x = x * weight
        return x


class TAN2D(nn.Module):
    """2D-TAN: ``forward(video (B, S, D), words (B, L, E), lengths (B,)) -> logits (B, N, N)`` (0 off the map)."""

    def __init__(
        self,
        feature_dim: int,
        word_dim: int,
        num_sample_clips: int,
        num_clips: int,
        num_scale_layers: Sequence[int],
        hidden_size: int = 512,
        text_hidden_size: int = 512,
        lstm_layers: int = 3,
        map_kernel_sizes: Sequence[int] = (5,) * 8,
        map_paddings: Sequence[int] = (16,) + (0,) * 7,
        map_dilations: Sequence[int] = (1,) * 8,
    ):
        super().__init__()
        if num_sample_clips % num_clips:
            raise ValueError(f"num_sample_clips ({num_sample_clips}) must be a multiple of num_clips ({num_clips})")
        out_size = map_conv_output_size(num_clips, map_kernel_sizes, map_paddings, map_dilations)
        if out_size != num_clips:
            raise ValueError(
                f"MapConv with kernels {list(map_kernel_sizes)}, paddings {list(map_paddings)}, dilations "
                f"{list(map_dilations)} turns a {num_clips}x{num_clips} map into {out_size}x{out_size}; "
                f"it must keep {num_clips}"
            )
        self.num_clips = num_clips
        self.frame_pool = FrameAvgPool(feature_dim, hidden_size, num_sample_clips // num_clips)
        self.register_buffer("map_mask", sparse_map_mask(num_clips, num_scale_layers)[None, None].float())
        self.fusion = SentenceFusion(word_dim, text_hidden_size, hidden_size, lstm_layers)
        self.map_conv = MapConv(hidden_size, [hidden_size] * len(map_kernel_sizes), map_kernel_sizes,
                                map_paddings, map_dilations)
        self.predict = nn.Conv2d(hidden_size, 1, kernel_size=1)

    def forward(self, video: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        clips = self.frame_pool(video.transpose(1, 2))
        map_h = sparse_max_pool_map(clips, self.map_mask[0, 0] > 0)
        fused = self.fusion(words, lengths, map_h, self.map_mask)
        fused = self.map_conv(fused, self.map_mask)
        return (self.predict(fused) * self.map_mask)[:, 0]
