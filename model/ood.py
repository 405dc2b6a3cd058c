"""Out-of-distribution scores: is this picture anything like the training images?

A classifier over ten classes answers one of the ten for any picture at all; a photo of a coffee cup
still comes out as a confident "cat" or "truck". The energy score of Liu et al., "Energy-based
Out-of-distribution Detection" (NeurIPS 2020), reads how familiar an input is off the logits alone:

    E(x) = -T * logsumexp(logits / T)

Low energy means in-distribution. We report the negative energy, ``T * logsumexp(logits / T)``, so
that a HIGHER score means MORE like the training data, and flag a picture when its score falls below
a threshold chosen on the training split so that 95% of training images stay in-distribution (the
usual TPR-95 operating point).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["METHOD", "OODCalibration", "OODError", "calibrate", "energy_score", "kept_fraction",
           "threshold_for_tpr"]

METHOD = "energy"
SCORE = "T * logsumexp(logits / T), the negative energy of Liu et al. 2020: higher = more in-distribution"


class OODError(ValueError):
    """An OOD calibration that cannot be used (unknown method, missing or impossible values)."""


def energy_score(logits: Tensor | np.ndarray, temperature: float = 1.0) -> Tensor:
    """The negative energy ``T * logsumexp(logits / T)`` over the last axis; higher = more familiar."""
    if temperature <= 0:
        raise OODError(f"temperature must be > 0, got {temperature}")
    logits = torch.as_tensor(logits, dtype=torch.float64)
    return temperature * torch.logsumexp(logits / temperature, dim=-1)


def threshold_for_tpr(scores: Tensor | np.ndarray, tpr: float = 0.95, decimals: int = 4) -> float:
    """The threshold that keeps at least ``tpr`` of ``scores`` in-distribution (score >= threshold).

    Rounded DOWN to ``decimals`` so the number written in a manifest keeps at least as many as the
    exact one would.
    """
    if not 0 < tpr <= 1:
        raise OODError(f"tpr must be in (0, 1], got {tpr}")
    ordered = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if ordered.size == 0:
        raise OODError("cannot choose a threshold from no scores")
    # the k lowest scores may fall below; k = floor((1 - tpr) n) leaves n - k >= tpr n at or above
    k = math.floor((1 - tpr) * ordered.size + 1e-9)
    k = min(k, ordered.size - 1)
    return math.floor(float(ordered[k]) * 10**decimals) / 10**decimals


def kept_fraction(scores: Tensor | np.ndarray, threshold: float) -> float:
    """The fraction of ``scores`` at or above ``threshold``: not flagged."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return float((scores >= threshold).mean())


@dataclass(frozen=True)
class OODCalibration:
    """What a weights manifest's ``ood`` entry records: how scores are made and where the line is."""

    method: str
    temperature: float
    threshold: float
    tpr_target: float
    train_tpr: float
    test_fraction_flagged: float | None
    data: str
    train_images: int
    test_images: int | None = None
    score: str = SCORE

    def __post_init__(self) -> None:
        if self.method != METHOD:
            raise OODError(f"unknown OOD method {self.method!r}; this version knows {METHOD!r}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)):
            raise OODError(f"OOD threshold must be a finite number, got {self.threshold!r}")
        if not self.temperature > 0:
            raise OODError(f"OOD temperature must be > 0, got {self.temperature!r}")

    def score_of(self, logits: Tensor | np.ndarray) -> Tensor:
        return energy_score(logits, self.temperature)

    def flagged(self, score: float) -> bool:
        """True when a picture with this score looks unlike the training images."""
        return bool(score < self.threshold)

    def manifest(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> OODCalibration:
        try:
            return cls(**entry)
        except TypeError as exc:  # a missing or unknown key
            raise OODError(f"unreadable OOD calibration: {exc}") from exc


def calibrate(train_logits: Tensor, *, data: str, test_logits: Tensor | None = None, tpr: float = 0.95,
              temperature: float = 1.0) -> OODCalibration:
    """The calibration for a model from its logits on the training split (and, to report, the test split)."""
    train_scores = energy_score(train_logits, temperature)
    threshold = threshold_for_tpr(train_scores, tpr)
    test_flagged = None
    if test_logits is not None:
        test_flagged = round(1 - kept_fraction(energy_score(test_logits, temperature), threshold), 4)
    return OODCalibration(
        method=METHOD, temperature=float(temperature), threshold=threshold, tpr_target=tpr,
        train_tpr=round(kept_fraction(train_scores, threshold), 4), test_fraction_flagged=test_flagged,
        data=data, train_images=int(train_scores.numel()),
        test_images=None if test_logits is None else int(test_logits.shape[0]),
    )
