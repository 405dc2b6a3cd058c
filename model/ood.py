"""Out-of-distribution scores: is this picture anything like the training images?

A classifier over ten classes answers one of the ten for any picture at all; a photo of a coffee cup
still comes out as a confident "cat" or "truck". The energy score of Liu et al., "Energy-based
Out-of-distribution Detection" (NeurIPS 2020), reads how familiar an input is off the logits alone:

    E(x) = -T * logsumexp(logits / T)

Low energy means in-distribution. We report the negative energy, ``T * logsumexp(logits / T)``, so
that a HIGHER score means MORE like the training data, and flag a picture when its score falls below
a threshold chosen on the training split so that 95% of training images stay in-distribution (the
usual TPR-95 operating point).

The energy score misses inputs that are nothing like a photo at all: uniform noise or a flat colour
at the model's input size comes out as a confident "frog" with a high energy score. The k-th nearest
neighbour distance of Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors" (ICML
2022), reads the pooled features instead: normalise them to unit length and measure how far the k-th
nearest of a bank of training images' features is,

    score(x) = -|| z(x) - z_(k) ||,   z = f / ||f||

again higher = more familiar. The bank is a seeded random sample of the training split, shipped
beside the weights (``<weights>.ood.safetensors``, float16); the threshold is chosen on the training
images outside the bank, so no image is its own neighbour. ``benchmarks/ood_methods.py`` compares the
two on the test split, noise, flat colours and the example photos.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

__all__ = ["METHODS", "OODCalibration", "OODError", "OODScorer", "calibrate", "calibrate_knn", "energy_score",
           "kept_fraction", "knn_score", "read_bank", "threshold_for_tpr"]

# what each method's score is, as the manifest and the API say it
SCORES = {
    "energy": "T * logsumexp(logits / T), the negative energy of Liu et al. 2020: higher = more in-distribution",
    "knn": "-(distance from the unit-length pooled features to the k-th nearest of a bank of training images' "
           "features), Sun et al. 2022: higher = more in-distribution",
}
METHODS = tuple(SCORES)
BANK_KEY = "features"


class OODError(ValueError):
    """An OOD calibration that cannot be used (unknown method, missing or impossible values)."""


def energy_score(logits: Tensor | np.ndarray, temperature: float = 1.0) -> Tensor:
    """The negative energy ``T * logsumexp(logits / T)`` over the last axis; higher = more familiar."""
    if temperature <= 0:
        raise OODError(f"temperature must be > 0, got {temperature}")
    logits = torch.as_tensor(logits, dtype=torch.float64)
    return temperature * torch.logsumexp(logits / temperature, dim=-1)


def knn_score(features: Tensor, bank: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Minus the distance from each row of ``features`` (N, D), made unit length, to its ``k``-th
    nearest row of ``bank`` (M, D, unit length); higher = more familiar.

    Between unit vectors |a - b|^2 = 2 - 2 a.b, so the nearest are the most similar: one matrix
    product (in float64, as exact as the distances themselves; ``torch.cdist`` took 5 ms for a
    picture against 5,000 vectors, this 1 ms), ``chunk`` rows at a time so a whole split's similarities
    never sit in memory at once."""
    if not 1 <= k <= len(bank):
        raise OODError(f"k must be 1..{len(bank)} (the bank's size), got {k}")
    z = F.normalize(torch.as_tensor(features).double(), dim=-1)
    bank = bank.double()
    nearest = [(part @ bank.T).topk(k, dim=-1).values[..., -1] for part in z.split(chunk)] if len(z) else [z[:, 0]]
    return -(2 - 2 * torch.cat(nearest)).clamp(min=0).sqrt()


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
    """What a weights manifest's ``ood`` entry records: how scores are made and where the line is.

    ``knn`` also names its bank file (beside the manifest), that file's sha256, its size and ``k``;
    ``temperature`` is the energy score's and None for ``knn``."""

    method: str
    temperature: float | None
    threshold: float
    tpr_target: float
    train_tpr: float
    test_fraction_flagged: float | None
    data: str
    train_images: int
    test_images: int | None = None
    score: str = SCORES["energy"]
    k: int | None = None
    bank: str | None = None
    bank_sha256: str | None = None
    bank_images: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise OODError(f"unknown OOD method {self.method!r}; this version knows {', '.join(METHODS)}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)):
            raise OODError(f"OOD threshold must be a finite number, got {self.threshold!r}")
        if self.method == "energy" and not (self.temperature is not None and self.temperature > 0):
            raise OODError(f"OOD temperature must be > 0, got {self.temperature!r}")
        if self.method == "knn" and not (isinstance(self.k, int) and self.k >= 1 and self.bank and self.bank_sha256
                                         and isinstance(self.bank_images, int) and self.bank_images >= self.k):
            raise OODError(f"a knn calibration needs k >= 1 and its bank (file, sha256, images >= k); got k={self.k!r}, "
                           f"bank={self.bank!r}, bank_images={self.bank_images!r}")

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


@dataclass(frozen=True)
class OODScorer:
    """Scores pictures as a calibration says: the energy of their logits, or (``knn``) the distance
    of their pooled features to the bank; with no calibration, the energy at T = 1 and no verdict."""

    calibration: OODCalibration | None = None
    bank: Tensor | None = None  # (M, D) unit-length training features, for knn

    def __post_init__(self) -> None:
        knn = self.calibration is not None and self.calibration.method == "knn"
        if knn != (self.bank is not None):
            raise OODError("a knn calibration needs its bank, and only knn uses one")
        if knn and len(self.bank) != self.calibration.bank_images:
            raise OODError(f"the bank holds {len(self.bank)} features; the calibration says "
                           f"{self.calibration.bank_images}")

    def scores(self, logits: Tensor, features: Tensor | None) -> Tensor:
        """One score per row of ``logits`` (N, K) and ``features`` (N, D); higher = more familiar."""
        if self.calibration is None:
            return energy_score(logits)
        if self.calibration.method == "energy":
            return energy_score(logits, self.calibration.temperature)
        if features is None:
            raise OODError("the knn score needs the pooled features")
        return knn_score(features, self.bank, self.calibration.k)


def _choose(train_scores: Tensor, tpr: float, test_scores: Tensor | None) -> dict[str, Any]:
    threshold = threshold_for_tpr(train_scores, tpr)
    return dict(threshold=threshold, tpr_target=tpr, train_tpr=round(kept_fraction(train_scores, threshold), 4),
                test_fraction_flagged=None if test_scores is None else
                round(1 - kept_fraction(test_scores, threshold), 4),
                train_images=int(train_scores.numel()),
                test_images=None if test_scores is None else int(test_scores.numel()))


def calibrate(train_logits: Tensor, *, data: str, test_logits: Tensor | None = None, tpr: float = 0.95,
              temperature: float = 1.0) -> OODCalibration:
    """The energy calibration for a model from its logits on the training split (and, to report, the test split)."""
    test_scores = None if test_logits is None else energy_score(test_logits, temperature)
    return OODCalibration(method="energy", temperature=float(temperature), data=data, score=SCORES["energy"],
                          **_choose(energy_score(train_logits, temperature), tpr, test_scores))


def calibrate_knn(train_features: Tensor, *, data: str, bank_file: str, test_features: Tensor | None = None,
                  tpr: float = 0.95, k: int = 5, bank_size: int = 5000,
                  seed: int = 0) -> tuple[OODCalibration, bytes]:
    """The knn calibration and its bank file's bytes (safetensors): ``bank_size`` training images drawn
    with ``seed`` make the bank (unit length, float16); the threshold keeps ``tpr`` of the other
    training images. ``bank_file`` is the name the bytes are to be saved under, beside the manifest."""
    if not 1 <= k <= bank_size < len(train_features):
        raise OODError(f"need 1 <= k <= bank size < training images; got k={k}, bank size {bank_size}, "
                       f"{len(train_features)} training images")
    order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(seed))
    bank = F.normalize(train_features[order[:bank_size]].double(), dim=-1).half().contiguous()
    payload = save_tensors({BANK_KEY: bank})
    # scored with the bank exactly as shipped (float16), so the threshold fits what the app computes
    stored = bank.double()
    train_scores = knn_score(train_features[order[bank_size:]], stored, k)
    test_scores = None if test_features is None else knn_score(test_features, stored, k)
    calibration = OODCalibration(method="knn", temperature=None, data=data, score=SCORES["knn"], k=k,
                                 bank=bank_file, bank_sha256=hashlib.sha256(payload).hexdigest(),
                                 bank_images=bank_size, **_choose(train_scores, tpr, test_scores))
    return calibration, payload


def read_bank(path: Path, calibration: OODCalibration) -> Tensor:
    """The bank a knn calibration names, checked against its sha256 and size, as float64."""
    try:
        payload = Path(path).read_bytes()
    except OSError as exc:
        raise OODError(f"cannot read the OOD bank {path}: {exc.strerror or exc}") from exc
    actual = hashlib.sha256(payload).hexdigest()
    if actual != calibration.bank_sha256:
        raise OODError(f"OOD bank {path} is corrupt or not this calibration's: sha256 {actual[:12]}... != "
                       f"expected {calibration.bank_sha256[:12]}...")
    bank = load_tensors(payload).get(BANK_KEY)
    if bank is None or bank.ndim != 2 or len(bank) != calibration.bank_images:
        raise OODError(f"OOD bank {path} does not hold {calibration.bank_images} feature vectors under {BANK_KEY!r}")
    return bank.double()
