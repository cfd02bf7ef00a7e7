"""Video backbones: R(2+1)D-18, R3D-18 (torchvision) and a width-scaled R(2+1)D-18 for CPU profiles.

Every backbone maps clips ``(N, 3, T, H, W)`` to ``(N, D)``: the global average pool of the last
stage, the classification layer dropped (the paper's ``h_v = f_v(x_v)``, 512-d for the ResNet-18
variants, ``round(512 * width)`` for ``r2plus1d_tiny``).

Initial weights (``EncoderConfig.weights``):
- ``None``: random initialisation (torchvision's);
- ``"kinetics400"``: torchvision's Kinetics-400 weights, read from the torch hub cache only
  (this package never downloads; a missing file is named with the place to put it and its URL);
- a path to a ``.pth`` state dict (torchvision layout, an ``fc.*`` head is ignored), to TSP's
  ``{"model": ...}`` checkpoints (``features.*``) or to a pre-training checkpoint of this package
  (its ``backbone.*`` weights are used). Files are read with ``weights_only=True``: one that needs
  arbitrary unpickling (and so could run code) is refused (``clap_bench.io.load_torch_file``).
``"source"`` (the synthetic stand-in for Kinetics) is resolved by the trainer into a checkpoint path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Dict, Optional

import torch
from torch import nn
from torchvision.models.video import resnet as tv_resnet

from clap_bench.config import EncoderConfig
from clap_bench.io import load_torch_file

ARCHS = ("r2plus1d_18", "r3d_18", "r2plus1d_tiny")

# torchvision's Kinetics-400 weights (file name in the hub cache, download address).
KINETICS400_WEIGHTS = {
    "r2plus1d_18": "https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth",
    "r3d_18": "https://download.pytorch.org/models/r3d_18-b3b3357e.pth",
}


class WeightsNotFoundError(FileNotFoundError):
    pass


class ScaledR2Plus1D(nn.Module):
    """R(2+1)D-18 with every channel count multiplied by ``width``, built from torchvision's blocks.

    Same depth, strides and (2+1)D factorisation as ``r2plus1d_18``; only the widths shrink, so the
    CPU profiles train the same kind of network the paper does, at a size two cores can afford.
    """

    def __init__(self, width: float = 0.25):
        super().__init__()
        if width <= 0:
            raise ValueError(f"r2plus1d_tiny: width must be > 0, got {width}")

        def ch(c: int) -> int:
            return max(4, int(round(c * width)))

        stem_mid, stem_out = ch(45), ch(64)
        self.stem = nn.Sequential(
            nn.Conv3d(3, stem_mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, stem_out, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(stem_out),
            nn.ReLU(inplace=True),
        )
        self._inplanes = stem_out
        self.layer1 = self._make_layer(ch(64), stride=1)
        self.layer2 = self._make_layer(ch(128), stride=2)
        self.layer3 = self._make_layer(ch(256), stride=2)
        self.layer4 = self._make_layer(ch(512), stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.out_dim = ch(512)
        for m in self.modules():  # torchvision's VideoResNet initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, stride: int, blocks: int = 2) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv3d(self._inplanes, planes, kernel_size=1, stride=(stride, stride, stride), bias=False),
                nn.BatchNorm3d(planes),
            )
        layers = [tv_resnet.BasicBlock(self._inplanes, planes, tv_resnet.Conv2Plus1D, stride, downsample)]
        self._inplanes = planes
        layers += [tv_resnet.BasicBlock(planes, planes, tv_resnet.Conv2Plus1D) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.avgpool(x).flatten(1)


class TorchvisionBackbone(nn.Module):
    """A torchvision VideoResNet without its classification layer: ``(N,3,T,H,W) -> (N,512)``."""

    def __init__(self, arch: str):
        super().__init__()
        net = getattr(tv_resnet, arch)(weights=None)
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hub_checkpoint_path(arch: str) -> Path:
    url = KINETICS400_WEIGHTS[arch]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def kinetics400_state_dict(arch: str) -> Dict[str, torch.Tensor]:
    if arch not in KINETICS400_WEIGHTS:
        raise ValueError(
            f"encoder {arch!r} has no Kinetics-400 weights (only {', '.join(KINETICS400_WEIGHTS)} do); "
            "use weights: source (synthetic profiles), a .pth path, or null"
        )
    path = hub_checkpoint_path(arch)
    if not path.exists():
        raise WeightsNotFoundError(
            f"Kinetics-400 weights for {arch} not found: expected the file {path} "
            f"(the torch hub cache, $TORCH_HOME/hub/checkpoints). This package never downloads; "
            f"fetch it from {KINETICS400_WEIGHTS[arch]} and put it at that path, "
            "or set encoder.weights to a local .pth file."
        )
    return load_torch_file(path, "Kinetics-400 weights file")


def _load_state_file(path: Path) -> Dict[str, torch.Tensor]:
    """The state dict in a weights file: a plain state dict, ``{"state_dict": ...}``, a pre-training
    checkpoint of this package (its ``backbone.*`` weights) or TSP's ``{"model": ...}`` layout."""
    if not path.exists():
        raise WeightsNotFoundError(f"encoder weights file not found: {path}")
    obj = load_torch_file(path, "encoder weights file")
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        model = obj["model"]
        # This package's checkpoints keep the encoder under "backbone."; TSP's under "features."
        # (load_weights matches that prefix); heads are dropped either way.
        state = {k[len("backbone."):]: v for k, v in model.items() if k.startswith("backbone.")}
        return state or model
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict or a checkpoint, got {type(obj).__name__}")
    return obj


class VideoEncoder(nn.Module):
    """The backbone ``f_v`` with its output size as ``out_dim``."""

    def __init__(self, arch: str, width: float = 1.0):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown encoder arch {arch!r}; known: {', '.join(ARCHS)}")
        self.arch = arch
        self.body = ScaledR2Plus1D(width) if arch == "r2plus1d_tiny" else TorchvisionBackbone(arch)
        self.out_dim = self.body.out_dim

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.body(clips)

    def stages(self) -> List[nn.Module]:
        """``[stem, layer1, layer2, layer3, layer4]``, lowest first (what ``freeze_stem``/``frozen_stages`` name)."""
        body = self.body.net if isinstance(self.body, TorchvisionBackbone) else self.body
        return [body.stem, body.layer1, body.layer2, body.layer3, body.layer4]

    def load_weights(self, weights: Optional[str | Path]) -> None:
        """Load ``weights`` (see the module docstring); ``None`` keeps the random initialisation."""
        if weights is None:
            return
        if str(weights) == "kinetics400":
            state = kinetics400_state_dict(self.arch)
        else:
            state = _load_state_file(Path(weights).expanduser())
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "net.fc."))}
        target = self.body.net if isinstance(self.body, TorchvisionBackbone) else self.body
        own = target.state_dict()
        # Accept plain torchvision keys, this module's own ("body.net.*" / "body.*") keys and TSP's.
        # TSP's released checkpoints keep the backbone under "features.".
        prefixes = ("body.net.", "body.", "net.", "features.", "")
        for prefix in prefixes:
            cand = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if cand and set(cand) == set(own):
                bad = [k for k in own if own[k].shape != cand[k].shape]
                if bad:
                    raise ValueError(
                        f"weights {weights}: shapes do not match encoder {self.arch} at {bad[:3]} "
                        f"(e.g. {tuple(cand[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); wrong arch or width?"
                    )
                target.load_state_dict(cand)
                return
        missing = sorted(set(own) - set(state))[:3]
        raise ValueError(
            f"weights {weights}: keys do not match encoder {self.arch} (e.g. missing {missing}); wrong arch?"
        )


def build_video_encoder(cfg: EncoderConfig, weights: Optional[str | Path] = None) -> VideoEncoder:
    """The encoder of ``cfg`` with ``weights`` (overrides ``cfg.weights`` when given) loaded."""
    enc = VideoEncoder(cfg.arch, cfg.width)
    w = weights if weights is not None else cfg.weights
    if w == "source":
        raise ValueError(
            "encoder.weights 'source' names the synthetic source pre-training; resolve it with "
            "clap_bench.training.resolve_init_weights(profile) first"
        )
    enc.load_weights(w)
    return enc


def file_hash(path: str | Path, length: int = 12) -> str:
    """Content hash of a weights/checkpoint file (keys caches made with those weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]
