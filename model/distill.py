"""Knowledge distillation (Hinton et al. 2015): teachers' softened predictions as a second target.

The teachers see the very batch the student trains on, augmentation included ("consistent
teaching", Beyer et al. 2022), so the target follows each view rather than being fixed per image.
Several teachers are averaged in probability: an ensemble of the shipped networks is more accurate
than any one of them, and the student learns towards the ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .network import ResidualAttentionNet
from .registry import ARCHITECTURES
from .weights import Weights, WeightsError, resolve_weights


@dataclass(frozen=True)
class Distillation:
    """What a training step distils from: teacher networks in eval mode, the loss's share and temperature."""

    teachers: tuple[nn.Module, ...]
    weight: float
    temperature: float


def resolve_teacher(spec: str) -> Weights:
    """A teacher named as shipped weights (``attention56_cifar.v7``) or by a manifest path (``*.json``)."""
    try:
        return resolve_weights(None, spec)
    except WeightsError as error:
        raise WeightsError(f"teacher {spec!r}: {error}") from None


def parse_teachers(value: str) -> list[str]:
    """``--teacher`` as a list: comma-separated, blanks ignored."""
    return [part.strip() for part in value.split(",") if part.strip()]


def load_teachers(specs: Sequence[str], classes: Sequence[str], input_size: int, mean, std,
                  device: torch.device) -> list[tuple[Weights, nn.Module]]:
    """The teachers in eval mode on ``device``, each checked to read the student's input (same size and
    normalisation: the batch is normalised once) and to predict the student's classes in its order."""
    teachers = []
    for spec in specs:
        weights = resolve_teacher(spec)
        problems = []
        if tuple(weights.classes) != tuple(classes):
            problems.append(f"its classes {list(weights.classes)} are not the data's {list(classes)}")
        if weights.input_size != input_size:
            problems.append(f"it reads {weights.input_size}-pixel images, the student {input_size}")
        if tuple(weights.mean) != tuple(mean) or tuple(weights.std) != tuple(std):
            problems.append(f"it normalises with mean {list(weights.mean)} / std {list(weights.std)}, "
                            f"the student with {list(mean)} / {list(std)}")
        if problems:
            raise ValueError(f"teacher {weights.name} cannot teach this run: " + "; ".join(problems))
        net = ResidualAttentionNet(ARCHITECTURES[weights.arch], num_classes=len(weights.classes))
        weights.load_into(net)
        net = net.to(device, memory_format=torch.channels_last).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        teachers.append((weights, net))
    return teachers


@torch.no_grad()
def soft_targets(teachers: Sequence[nn.Module], x: Tensor, temperature: float, amp: str = "off") -> Tensor:
    """The teachers' mean class probabilities for ``x`` at ``temperature`` (float32, rows sum to 1)."""
    if not teachers:
        raise ValueError("soft_targets needs at least one teacher")
    total = None
    for net in teachers:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = net(x)
        p = F.softmax(logits.float() / temperature, dim=1)
        total = p if total is None else total + p
    return total / len(teachers)


def distillation_loss(logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """KL(targets || softmax(logits / T)) per image, averaged, times T² (so its gradients keep the
    cross-entropy's scale whatever T is; Hinton et al. 2015). Zero when the student matches."""
    if temperature <= 0:
        raise ValueError(f"the distillation temperature must be positive, got {temperature}")
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(log_p, targets, reduction="batchmean") * temperature**2
