"""The model zoo: CIFAR-style ResNet-20/56, VGG-11/16 and MobileNet-V1/V2.

Torchvision does not work with the CPU torch build these machines use, so the reference
networks of the pruning literature (AMC, DepGraph, EagleEye all report on CIFAR ResNet-56,
VGG and MobileNets) are written here.  Every network:

* takes any ``in_channels`` / ``num_classes`` and any input of at least 8x8 pixels (an
  adaptive average pool sits in front of a single linear head);
* keeps every op a module (residual adds included) so Torch-Pruning's DepGraph can trace
  the coupling between a block's output channels and its shortcut;
* carries ``autoprune_spec``, the plain-JSON recipe that :func:`build_model_from_spec`
  turns back into the same architecture, so pruned or cached weights can be reloaded
  without pickling a module.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.user_model import rebuild_user_model

from .attention_models import CharGPT, ViT

__all__ = [
    "LANGUAGE_MODELS",
    "available_models",
    "build_model",
    "build_model_from_spec",
    "make_divisible",
    "unknown_model",
    "BasicBlock",
    "CifarResNet",
    "VGG",
    "MobileNetV1",
    "InvertedResidual",
    "MobileNetV2",
]

# Smallest channel count any layer gets under a width multiplier: narrower layers leave
# the pruning search nothing to decide and make BatchNorm statistics noisy.
_MIN_CHANNELS = 8


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing over 10 %.

    The rule of the TensorFlow MobileNet reference code (also torchvision's
    ``_make_divisible``): hardware kernels prefer channel counts in multiples of 8.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _scaled(channels: int, width_mult: float) -> int:
    """Plain width scaling for ResNet/VGG: nearest integer, never below ``_MIN_CHANNELS``."""
    return max(_MIN_CHANNELS, int(round(channels * width_mult)))


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (He et al. 2015, fan-out as in torchvision), unit BN, small head."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


def _conv_bn(in_ch: int, out_ch: int, *, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN projection shortcut.

    He et al. 2016 use a parameter-free zero-padding shortcut (option A) on CIFAR; option B
    (a 1x1 projection) is used here because its channels are real tensors that DepGraph
    couples and prunes, while zero padding would be an untraceable ``F.pad`` on channels.
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(*_conv_bn(in_ch, out_ch, kernel=1, stride=stride))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16/32/64 channels, three stages of n basic blocks."""

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        widths = [_scaled(c, width_mult) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for index, out_ch in enumerate(widths):
            blocks: list[nn.Module] = []
            for block_index in range(blocks_per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride=stride))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


# --------------------------------------------------------------------------- VGG

# "M" marks a 2x2 max pool (Simonyan & Zisserman 2015, configurations A and D).
_VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """CIFAR-style VGG: conv3x3-BN-ReLU stacks, max pools, global pool and one linear head.

    At 32x32 the five pools leave 1x1x512, so the classic 512->num_classes head of the CIFAR
    variants applies.  The number of pools is fixed at construction from ``input_size``
    (a forward-time decision would be invisible to the tracer): pools that would shrink the
    map below 1x1 are left out.  ``ceil_mode`` additionally keeps a smaller-than-planned
    input from failing (a 1x1 map pools to 1x1).
    """

    def __init__(
        self,
        config: str,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if config not in _VGG_CONFIGS:
            raise ValueError(f"unknown VGG configuration {config!r}; choose from {sorted(_VGG_CONFIGS)}")
        layers: list[nn.Module] = []
        in_ch, size = in_channels, input_size
        for item in _VGG_CONFIGS[config]:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                    size = (size + 1) // 2
                continue
            out_ch = _scaled(int(item), width_mult)
            layers += [*_conv_bn(in_ch, out_ch, kernel=3), nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


# --------------------------------------------------------------------------- MobileNet-V1

# (output channels, stride) of each depthwise-separable block (Howard et al. 2017, Table 1).
# With the stem at stride 1 (the common CIFAR adaptation, kuangliu/pytorch-cifar) four
# stride-2 blocks take a 32x32 input to 2x2; padded convs keep an 8x8 input at >= 1x1.
_MOBILENET_V1_BLOCKS: list[tuple[int, int]] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]


class MobileNetV1(nn.Module):
    """Depthwise-separable MobileNet-V1; the stem conv has stride 1 for small images."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        stem = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [*_conv_bn(in_channels, stem, kernel=3), nn.ReLU(inplace=True)]
        in_ch = stem
        for channels, stride in _MOBILENET_V1_BLOCKS:
            out_ch = make_divisible(channels * width_mult)
            layers += [
                *_conv_bn(in_ch, in_ch, kernel=3, stride=stride, groups=in_ch),
                nn.ReLU(inplace=True),
                *_conv_bn(in_ch, out_ch, kernel=1),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


# --------------------------------------------------------------------------- MobileNet-V2

# (expansion t, output channels c, repeats n, first stride s) from Sandler et al. 2018,
# Table 2, with the stem and the first two downsampling stages at stride 1 for 32x32
# inputs, as in the widely used CIFAR adaptation (kuangliu/pytorch-cifar).
_MOBILENET_V2_SETTINGS: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - linear project (1x1), residual when shapes agree."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*_conv_bn(in_ch, hidden, kernel=1), nn.ReLU6(inplace=True)]
        layers += [
            *_conv_bn(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            nn.ReLU6(inplace=True),
            # No activation after the projection: the "linear bottleneck" of the paper.
            *_conv_bn(hidden, out_ch, kernel=1),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNet-V2 with inverted residuals and a 1280-wide last 1x1 conv."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        stem = make_divisible(32 * width_mult)
        # The last conv never narrows below 1280 (torchvision's rule): it carries the
        # features the classifier reads and costs little at the final resolution.
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [*_conv_bn(in_channels, stem, kernel=3), nn.ReLU6(inplace=True)]
        in_ch = stem
        for expansion, channels, repeats, stride in _MOBILENET_V2_SETTINGS:
            out_ch = make_divisible(channels * width_mult)
            for index in range(repeats):
                layers.append(
                    InvertedResidual(in_ch, out_ch, stride=stride if index == 0 else 1, expansion=expansion)
                )
                in_ch = out_ch
        layers += [*_conv_bn(in_ch, last, kernel=1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(last, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


# --------------------------------------------------------------------------- registry

# Every builder takes the same keyword arguments; models whose layout does not depend on the
# input size simply ignore ``input_size`` (their padded convs never shrink a map below 1x1).
_Builder = Callable[[int, int, float, int], nn.Module]

_BUILDERS: dict[str, _Builder] = {
    "resnet20": lambda nc, ic, w, s: CifarResNet(20, num_classes=nc, in_channels=ic, width_mult=w),
    "resnet56": lambda nc, ic, w, s: CifarResNet(56, num_classes=nc, in_channels=ic, width_mult=w),
    "vgg11": lambda nc, ic, w, s: VGG("vgg11", num_classes=nc, in_channels=ic, width_mult=w, input_size=s),
    "vgg16": lambda nc, ic, w, s: VGG("vgg16", num_classes=nc, in_channels=ic, width_mult=w, input_size=s),
    "mobilenetv1": lambda nc, ic, w, s: MobileNetV1(num_classes=nc, in_channels=ic, width_mult=w),
    "mobilenetv2": lambda nc, ic, w, s: MobileNetV2(num_classes=nc, in_channels=ic, width_mult=w),
    # a small Vision Transformer: a 4x4 grid of patches, 4 pre-norm blocks of 4 heads, width 64
    "vit": lambda nc, ic, w, s: ViT(num_classes=nc, in_channels=ic, image_size=s,
                                    patch=max(1, s // 4), dim=make_divisible(64 * w, 8)),
    # the language task's decoder (``nc``: the vocabulary, ``s``: the context length): six
    # causal blocks of 4 heads, width 64 -- deep and narrow, so per-layer budgets matter
    "chargpt": lambda nc, ic, w, s: CharGPT(vocab_size=nc, block=s, dim=make_divisible(64 * w, 8),
                                            depth=6, heads=4),
}

#: Zoo models that read character ids (the ``python-stdlib`` corpus), not images.
LANGUAGE_MODELS: frozenset[str] = frozenset({"chargpt"})


def available_models(reads: str | None = None) -> list[str]:
    """Names accepted by :func:`build_model`, in a stable order; ``reads="images"`` or
    ``"text"``: only the models that read those."""
    if reads not in (None, "images", "text"):
        raise ValueError(f"reads must be images or text, not {reads!r}")
    return [n for n in _BUILDERS if reads is None or (n in LANGUAGE_MODELS) == (reads == "text")]


def unknown_model(name: str) -> str:
    """Why ``name`` is no model: a Python file without its factory (``mynet.py``, which wants
    ``mynet.py:make``), or a name the zoo lacks."""
    path = Path(name.strip()).expanduser()
    if path.suffix == ".py" or path.is_file():
        if not path.is_file():
            return (f"--model {name}: {path} does not exist (your own model is "
                    "path/to/file.py:factory, a callable in it returning an nn.Module)")
        found = _top_level_callables(path)
        example = f"{name.strip()}:{found[0] if found else 'make_model'}"
        return (f"--model {name} names a file but not the callable in it that builds the model: "
                f"pass file.py:factory, e.g. --model {example}"
                + (f" (its functions and classes: {', '.join(found[:12])})" if found else ""))
    return (f"unknown model {name!r}; available models: {', '.join(available_models())}, or "
            "your own as path/to/file.py:factory or package.module:factory")


def _top_level_callables(path: Path) -> list[str]:
    """The public functions and classes ``path`` defines (read, not run)."""
    try:
        tree = ast.parse(path.read_text(errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return []
    return [n.name for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not n.name.startswith("_")]


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_mult: float = 1.0,
    input_size: int = 32,
) -> nn.Module:
    """Build a freshly initialised zoo model; ``autoprune_spec`` records how to rebuild it."""
    key = name.strip().lower()
    if key not in _BUILDERS:
        raise ValueError(unknown_model(name))
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    if input_size < 8:
        raise ValueError(f"input_size must be at least 8 pixels, got {input_size}")
    model = _BUILDERS[key](num_classes, in_channels, float(width_mult), input_size)
    model.autoprune_spec = {
        "name": key,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "width_mult": float(width_mult),
        "input_size": input_size,
    }
    return model


def build_model_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild the architecture recorded in a model's ``autoprune_spec`` (weights not
    included): a zoo model, or a user's factory (``autoprune.user_model``)."""
    if "factory" in spec:
        return rebuild_user_model(spec)
    if "module" in spec:
        raise ValueError(f"this network was made from a module of class {spec['module']} passed "
                         "to the Python API, so it cannot be rebuilt from its record. Fix: load "
                         "its .pt2 with torch.export.load (no model code needed)")
    try:
        return build_model(
            str(spec["name"]),
            num_classes=int(spec["num_classes"]),
            in_channels=int(spec["in_channels"]),
            width_mult=float(spec["width_mult"]),
            input_size=int(spec["input_size"]),
        )
    except KeyError as error:
        raise ValueError(f"model spec {dict(spec)!r} lacks the field {error.args[0]!r}") from None
