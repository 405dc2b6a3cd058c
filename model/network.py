"""Residual Attention Network (Wang et al., CVPR 2017, arXiv:1704.06904).

Layout follows the official Caffe deploy prototxts (github.com/fwang91/residual-attention-network):
pre-activation bottleneck units, attention modules with p=1, t=2, r=1, and the output
``H(x) = (1 + M(x)) * T(x)`` (attention residual learning).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ArchConfig",
    "AttentionModule",
    "AttentionOutput",
    "Intermediates",
    "ResidualAttentionNet",
    "ResidualUnit",
    "SoftMaskBranch",
]


class ResidualUnit(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 (C/4), BN-ReLU-3x3 (stride), BN-ReLU-1x1 (C).

    The shortcut is the identity on the raw input; where the shape changes it is a 1x1
    projection of the *pre-activated* input, as in the official prototxts.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = out_channels // 4
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.projection = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.projection is None else self.projection(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut


class SoftMaskBranch(nn.Module):
    """Bottom-up top-down hourglass producing M(x) in (0, 1), same shape as the trunk output.

    ``depth`` max-pools go down; each level has one unit, each intermediate level also a skip
    unit, the bottom level two units. Going up, the coarser map is bilinearly up-sampled to the
    exact size of the matching down-path tensor (so odd input sizes work), the skip is added,
    and one unit follows. The top is up-sampled to the input size and ends in
    BN-ReLU-1x1, BN-ReLU-1x1, sigmoid.
    """

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"soft mask depth must be >= 1, got {depth}")
        self.depth = depth
        self.down = nn.ModuleList(ResidualUnit(channels, channels) for _ in range(depth))
        self.skips = nn.ModuleList(ResidualUnit(channels, channels) for _ in range(depth - 1))
        self.bottom = ResidualUnit(channels, channels)
        self.up = nn.ModuleList(ResidualUnit(channels, channels) for _ in range(depth - 1))
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        skips: list[Tensor] = []
        down_path: list[Tensor] = []
        out = x
        for level, unit in enumerate(self.down):
            out = unit(F.max_pool2d(out, kernel_size=3, stride=2, padding=1))
            if level < self.depth - 1:
                down_path.append(out)
                skips.append(self.skips[level](out))
        out = self.bottom(out)
        for level in reversed(range(self.depth - 1)):
            target = down_path[level]
            out = F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)
            out = self.up[level](out + skips[level])
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.head(out))


@dataclass(frozen=True)
class AttentionOutput:
    """One attention module's soft mask M (N, C, h, w) and trunk output T at the mask's size."""

    name: str
    stage: int
    mask: Tensor
    trunk: Tensor

    @property
    def resolution(self) -> tuple[int, int]:
        return (int(self.mask.shape[-2]), int(self.mask.shape[-1]))


@dataclass(frozen=True)
class Intermediates:
    logits: Tensor
    attention: list[AttentionOutput] = field(default_factory=list)
    features: Tensor | None = None  # (N, head_channels): the pooled features the classifier reads

    def __getitem__(self, name: str) -> AttentionOutput:
        for item in self.attention:
            if item.name == name:
                return item
        raise KeyError(f"no attention module named {name!r}; have {[a.name for a in self.attention]}")


class AttentionModule(nn.Module):
    """p=1 pre unit, trunk of t=2 units, soft mask branch, (1 + M) * T, one post unit.

    ``name`` (e.g. ``stage2.module1``) is given by the network that builds the module: the one
    place where attention modules are named.
    """

    def __init__(self, channels: int, mask_depth: int, name: str = "", stage: int = 0) -> None:
        super().__init__()
        self.name = name
        self.stage = stage
        self.pre = ResidualUnit(channels, channels)
        self.trunk = nn.Sequential(ResidualUnit(channels, channels), ResidualUnit(channels, channels))
        self.mask = SoftMaskBranch(channels, mask_depth)
        self.post = ResidualUnit(channels, channels)

    def forward(self, x: Tensor, mask_off: bool = False, record: list[AttentionOutput] | None = None) -> Tensor:
        """H = post((1 + M) * T). With ``mask_off`` M is zero, so H = post(T).

        ``record``, a list the caller owns, receives this call's mask and trunk output: the
        intermediates come back without hooks or module state, while the call still goes through
        ``nn.Module.__call__`` so other people's forward hooks (Grad-CAM, Captum) fire.
        """
        x = self.pre(x)
        trunk = self.trunk(x)
        mask = torch.zeros_like(trunk) if mask_off else self.mask(x)
        if record is not None:
            record.append(AttentionOutput(name=self.name, stage=self.stage, mask=mask, trunk=trunk))
        return self.post((1 + mask) * trunk)


@dataclass(frozen=True)
class ArchConfig:
    """Everything that defines a layout; stored in checkpoints to catch mismatches."""

    name: str
    stem: str  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": 3x3 conv
    stem_channels: int
    stage_channels: tuple[int, int, int]
    modules_per_stage: tuple[int, int, int]
    mask_depths: tuple[int, int, int]
    head_channels: int  # width of the three final units
    head_stride: int  # stride of the first final unit
    reference_size: int  # the input size the layout was designed for


class ResidualAttentionNet(nn.Module):
    def __init__(self, config: ArchConfig, num_classes: int = 1000) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        c = config
        if c.stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(3, c.stem_channels, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(c.stem_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        elif c.stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(3, c.stem_channels, 3, padding=1, bias=False))
        else:
            raise ValueError(f"unknown stem {c.stem!r}")

        self.stages = nn.ModuleList()
        in_channels = c.stem_channels
        for index, (channels, count, depth) in enumerate(
            zip(c.stage_channels, c.modules_per_stage, c.mask_depths)
        ):
            stage = nn.Module()
            stage.transition = ResidualUnit(in_channels, channels, stride=1 if index == 0 else 2)
            stage.attention = nn.ModuleList(
                AttentionModule(channels, depth, name=f"stage{index + 1}.module{m + 1}", stage=index + 1)
                for m in range(count)
            )
            self.stages.append(stage)
            in_channels = channels

        self.head = nn.Sequential(
            ResidualUnit(in_channels, c.head_channels, stride=c.head_stride),
            ResidualUnit(c.head_channels, c.head_channels),
            ResidualUnit(c.head_channels, c.head_channels),
        )
        self.final_norm = nn.BatchNorm2d(c.head_channels)
        self.classifier = nn.Linear(c.head_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def attention_modules(self) -> dict[str, AttentionModule]:
        """Every attention module by its name, in network order."""
        return {module.name: module for stage in self.stages for module in stage.attention}

    @property
    def module_names(self) -> list[str]:
        """Stable names of the attention modules in network order, e.g. ``stage2.module1``."""
        return list(self.attention_modules())

    def _run(self, x: Tensor, masks_off: Collection[str], keep: bool) -> Intermediates:
        unknown = set(masks_off) - set(self.module_names)
        if unknown:
            raise ValueError(f"unknown attention modules {sorted(unknown)}; have {self.module_names}")
        outputs: list[AttentionOutput] = []
        record = outputs if keep else None
        x = self.stem(x)
        for stage in self.stages:
            x = stage.transition(x)
            for module in stage.attention:
                x = module(x, mask_off=module.name in masks_off, record=record)
        x = self.head(x)
        x = F.relu(self.final_norm(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return Intermediates(logits=self.classifier(x), attention=outputs, features=x)

    def forward(self, x: Tensor, masks_off: Collection[str] = ()) -> Tensor:
        return self._run(x, masks_off, keep=False).logits

    def forward_head(self, x: Tensor) -> Intermediates:
        """Logits and the pooled features (N, head_channels) the classifier reads, without keeping the
        masks (``attention`` is empty): what a feature-space OOD score of the head compares."""
        return self._run(x, (), keep=False)

    def forward_intermediates(self, x: Tensor, masks_off: Collection[str] | bool = ()) -> Intermediates:
        """Logits plus every attention module's soft mask and trunk output, in network order, and the
        pooled features.

        ``masks_off`` names modules whose mask is set to zero (the "attention off" ablation);
        ``True`` turns off every module.
        """
        if masks_off is True:
            masks_off = self.module_names
        elif masks_off is False:
            masks_off = ()
        return self._run(x, masks_off, keep=True)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: ResidualAttentionNet, size: Sequence[int] | None = None) -> list[dict]:
    """Module names, stages, channels and mask resolutions for an input of ``size`` (H, W)."""
    h, w = size or (model.config.reference_size, model.config.reference_size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.forward_intermediates(torch.zeros(1, 3, h, w))
    model.train(was_training)
    return [
        {"module": a.name, "stage": a.stage, "channels": int(a.mask.shape[1]), "shape": list(a.resolution)}
        for a in out.attention
    ]
