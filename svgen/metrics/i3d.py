"""The I3D video network (Inception-v1 inflated to 3D, Kinetics-400) for FVD and KVD.

The layout and state_dict keys follow the widely used PyTorch port of DeepMind's I3D
(``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``, ...),
the format of the ``i3d_pretrained_400.pt`` / ``rgb_imagenet.pt`` files FVD code bases load.
TensorFlow-style SAME padding is computed per input, as in the original.

Features: the 400 Kinetics logits, averaged over the remaining time steps (as FVD uses them), for
clips resized to 224 x 224 with pixel values in [-1, 1]. Weights come from a local file
(``eval.i3d_path``); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from svgen.metrics.weights import FeatureWeightsError, load_state, read_state, width_of

MIN_FRAMES = 9  # the temporal strides (2, 2, 2) and the final 2-step average pool need >= 9 frames


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    pad = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    return pad // 2, pad - pad // 2


def _pad3d(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    (pt0, pt1), (ph0, ph1), (pw0, pw1) = (_same_pad(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride))
    return F.pad(x, (pw0, pw1, ph0, ph1, pt0, pt1))


class Unit3D(nn.Module):
    """SAME-padded Conv3d -> BatchNorm (eps 1e-3) -> ReLU (or a plain biased conv for the logits)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True,
                 relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad3d(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad3d(x, self.kernel, self.stride), self.kernel, self.stride)


class Inception(nn.Module):
    def __init__(self, cin: int, c: list[int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


_MIXED = [  # name, branch widths (b0, b1a, b1b, b2a, b2b, b3b); None: a max pool (kernel, stride)
    ("Mixed_3b", [64, 96, 128, 16, 32, 32]), ("Mixed_3c", [128, 128, 192, 32, 96, 64]),
    ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", [192, 96, 208, 16, 48, 64]), ("Mixed_4c", [160, 112, 224, 24, 64, 64]),
    ("Mixed_4d", [128, 128, 256, 24, 64, 64]), ("Mixed_4e", [112, 144, 288, 32, 64, 64]),
    ("Mixed_4f", [256, 160, 320, 32, 128, 128]),
    ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", [256, 160, 320, 32, 128, 128]), ("Mixed_5c", [384, 192, 384, 48, 128, 128]),
]


class InceptionI3d(nn.Module):
    """I3D up to its logits; ``width`` scales every channel count (1.0 is the published network;
    smaller widths serve tests, with weights saved and loaded the same way)."""

    def __init__(self, num_classes: int = 400, width: float = 1.0):
        super().__init__()
        w = lambda c: max(2, int(round(c * width)))  # noqa: E731
        self.Conv3d_1a_7x7 = Unit3D(3, w(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(w(64), w(64))
        self.Conv3d_2c_3x3 = Unit3D(w(64), w(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3"]
        cin = w(192)
        for name, spec in _MIXED:
            if isinstance(spec, tuple):
                setattr(self, name, MaxPool3dSame(*spec))
            else:
                block = Inception(cin, [w(c) for c in spec])
                setattr(self, name, block)
                cin = block.out_channels
            self.order.append(name)
        self.logits = Unit3D(cin, num_classes, bn=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, 224, 224) in [-1, 1] -> (B, num_classes) logits averaged over time."""
        for name in self.order:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))


def load_i3d(path: str | Path) -> InceptionI3d:
    """The I3D network with weights from a local state_dict file (config key ``eval.i3d_path``)."""
    what, key = "I3D", "eval.i3d_path"
    state = read_state(path, what, key)
    net = InceptionI3d(width=width_of(state, "Conv3d_1a_7x7.conv3d.weight", 64, path=path, what=what, key=key))
    load_state(net, state, path=path, what=what, key=key, ignore=("num_batches_tracked",))
    return net.eval()


def preprocess(frames: np.ndarray | torch.Tensor, num_frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> (3, num_frames, 224, 224) in [-1, 1]: ``num_frames`` frames
    taken evenly over the clip, each resized (bilinear, antialiased) to 224 x 224."""
    frames = torch.as_tensor(frames)
    t = frames.shape[0]
    if t < max(num_frames, MIN_FRAMES):
        raise ValueError(f"FVD needs clips of at least {max(num_frames, MIN_FRAMES)} frames (eval.fvd_frames "
                         f"= {num_frames}; I3D needs >= {MIN_FRAMES}); this clip has {t}. Lower eval.fvd_frames "
                         "or evaluate longer clips.")
    idx = torch.linspace(0, t - 1, num_frames).round().long()
    x = frames[idx].to(device).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    return (x / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3)


@torch.no_grad()
def i3d_features(net: InceptionI3d, clips: list, num_frames: int = 16) -> np.ndarray:
    """(N, 400) features of a batch of (T, H, W, 3) uint8 clips."""
    dev = next(net.parameters()).device
    x = torch.stack([preprocess(c, num_frames, dev) for c in clips])
    return net(x).float().cpu().numpy()


__all__ = ["FeatureWeightsError", "InceptionI3d", "i3d_features", "load_i3d", "preprocess"]
