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

The classifier's features alone let much of uniform noise through (about half of it for the distilled
Attention-92): noise can land near some class. So a knn calibration reads several *views* of one
forward pass, each with its own bank: ``head``, the classifier's pooled features, and by default
``stage1.module1:std``, the per-channel standard deviation over positions of the first attention
module's output ``(1 + M) * T``, which tells the texture of noise (and of flat colours) from a photo's
(``benchmarks/ood_layers.py`` compares views). Views' distances are not on one scale, so each is read
as a training percentile: the share of held-out training images whose score in that view is lower.
A picture's score is its smallest percentile over the views, so it is flagged when it looks unlike the
training images in ANY view; the threshold on that score again keeps 95% of held-out training images.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from .network import Intermediates

__all__ = ["DEFAULT_VIEWS", "HEAD", "METHODS", "OODCalibration", "OODError", "OODScorer", "calibrate",
           "calibrate_knn", "energy_score", "float32_beside", "floor_to", "kept_fraction", "knn_score", "percentile", "read_bank",
           "threshold_for_tpr", "view_features"]

# what each method's score is, as the manifest and the API say it
SCORES = {
    "energy": "T * logsumexp(logits / T), the negative energy of Liu et al. 2020: higher = more in-distribution",
    "knn": "-(distance from the unit-length pooled features to the k-th nearest of a bank of training images' "
           "features), Sun et al. 2022: higher = more in-distribution",
}
METHODS = tuple(SCORES)
VIEWS_SCORE = ("the smallest, over the views, of the share of held-out training images whose knn score (minus the "
               "distance of the unit-length features to the k-th nearest of a bank of training images', Sun et al. "
               "2022) in that view is lower: 0 to 1, higher = more in-distribution")
BANK_KEY = "features"  # the one bank of a calibration without views
HEAD = "head"  # the view of the pooled features the classifier reads
STATISTICS = ("mean", "std")  # over positions, per channel, of a module's output
DEFAULT_VIEWS = (HEAD, "stage1.module1:std")
QUANTILES = 1001  # each view's held-out training scores are shipped as this many quantiles


def parse_view(view: str) -> tuple[str, str] | None:
    """``head`` -> None; ``<module>:<statistic>`` -> (module, statistic)."""
    if view == HEAD:
        return None
    module, _, statistic = view.rpartition(":")
    if not module or statistic not in STATISTICS:
        raise OODError(f"unknown OOD view {view!r}: use {HEAD!r} or '<attention module>:<{'|'.join(STATISTICS)}>', "
                       f"e.g. {DEFAULT_VIEWS[1]!r}")
    return module, statistic


def view_features(out: Intermediates, views: Sequence[str]) -> dict[str, Tensor]:
    """Each view's features (N, D), float32, from one forward's intermediates: ``head``, the pooled
    features the classifier reads; ``<module>:mean`` or ``<module>:std``, that statistic over positions
    of each channel of the module's output ``(1 + M) * T``."""
    found = {}
    for view in views:
        parsed = parse_view(view)
        if parsed is None:
            found[view] = out.features.float()
        else:
            module = out[parsed[0]]
            h = (1 + module.mask.float()) * module.trunk.float()
            found[view] = h.mean((2, 3)) if parsed[1] == "mean" else h.std((2, 3))
    return found


def percentile(scores: Tensor, quantiles: Tensor) -> Tensor:
    """The share of held-out training images that score lower, read off their ``quantiles`` (Q values
    at 0, 1/(Q-1), ..., 1) by linear interpolation: 0 below the lowest, 1 above the highest."""
    levels = np.linspace(0.0, 1.0, len(quantiles))
    return torch.from_numpy(np.interp(scores.double().numpy(), quantiles.double().numpy(), levels))


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
    return floor_to(float(ordered[k]), decimals)


def floor_to(value: float, decimals: int = 4) -> float:
    """The largest number of ``decimals`` decimals at or below ``value``. Scores and the threshold
    rounded so compare as the unrounded ones do (a 4-decimal threshold t: value >= t exactly when
    floor_to(value) >= t), which rounding to nearest breaks within half a step of t."""
    if not math.isfinite(value):  # NaN (flagged, as no evidence of a familiar picture) stays as it is
        return value
    scale = 10**decimals
    # value * scale is itself rounded: 0.3465 * 1e4 is 3464.9999999999995, and -0.9994000000000001 * 1e4
    # is -9994.0 exactly, so the floor is corrected by a step either way, comparing n / scale with value
    n = math.floor(value * scale)
    while (n + 1) / scale <= value:
        n += 1
    while n / scale > value:
        n -= 1
    return n / scale


def float32_beside(scores: np.ndarray, flags: np.ndarray, threshold: float) -> np.ndarray:
    """``scores`` as float32 that compare with ``threshold`` as ``flags`` say: the nearest float32 of a
    score at the threshold can fall below it (0.0257 becomes 0.025699999), so such a value moves by
    the float32 steps it takes to land on its flag's side."""
    out = np.asarray(scores, dtype=np.float32).copy()
    for i, flagged in enumerate(np.asarray(flags, dtype=bool)):
        toward = np.float32(-np.inf if flagged else np.inf)
        while np.isfinite(out[i]) and (float(out[i]) < threshold) != flagged:
            out[i] = np.nextafter(out[i], toward)
    return out


def kept_fraction(scores: Tensor | np.ndarray, threshold: float) -> float:
    """The fraction of ``scores`` at or above ``threshold``: not flagged."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return float((scores >= threshold).mean())


@dataclass(frozen=True)
class OODCalibration:
    """What a weights manifest's ``ood`` entry records: how scores are made and where the line is.

    ``knn`` also names its bank file (beside the manifest), that file's sha256, its size and ``k``, and
    its ``views`` (None: calibrations made before views, whose score is the head view's knn score itself);
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
    views: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.views is not None:
            object.__setattr__(self, "views", tuple(self.views))  # a manifest's list, hashable and comparable
            if self.method != "knn" or not self.views or len(set(self.views)) != len(self.views):
                raise OODError(f"OOD views are for knn, at least one, each once; got {self.method} {self.views!r}")
            for view in self.views:
                parse_view(view)
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
        """True when a picture with this score looks unlike the training images (a NaN score too)."""
        return not score >= self.threshold

    def manifest(self) -> dict[str, Any]:
        entry = asdict(self)
        if self.views is None:  # a calibration from before views reads back as it was written
            del entry["views"]
        else:
            entry["views"] = list(self.views)
        return entry

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> OODCalibration:
        try:
            return cls(**entry)
        except TypeError as exc:  # a missing or unknown key
            raise OODError(f"unreadable OOD calibration: {exc}") from exc


@dataclass(frozen=True)
class OODScorer:
    """Scores pictures as a calibration says: the energy of their logits, or (``knn``) each view's
    distance to its bank read as a training percentile, the smallest over the views (calibrations
    without views: the head view's distance itself); with no calibration, the energy at T = 1 and no
    verdict."""

    calibration: OODCalibration | None = None
    bank: Mapping[str, Tensor] | None = None  # the bank file's tensors (``read_bank``), for knn

    def __post_init__(self) -> None:
        knn = self.calibration is not None and self.calibration.method == "knn"
        if knn != (self.bank is not None):
            raise OODError("a knn calibration needs its bank, and only knn uses one")
        if knn:
            _check_bank(self.bank, self.calibration, "the bank")

    @property
    def views(self) -> tuple[str, ...]:
        """The features ``scores`` reads (``view_features``); none for the energy score."""
        if self.calibration is None or self.calibration.method == "energy":
            return ()
        return self.calibration.views or (HEAD,)

    def view_scores(self, features: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
        """Each view's training percentile (N,) for a calibration with views, which ``scores`` takes
        the smallest of (it says which view found a picture unfamiliar); None for other calibrations."""
        if self.calibration is None or self.calibration.views is None:
            return None
        self._check_features(features)
        k = self.calibration.k
        return {view: percentile(knn_score(features[view], self.bank[f"{view}/features"], k),
                                 self.bank[f"{view}/quantiles"]) for view in self.views}

    def scores_and_views(self, logits: Tensor, features: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor] | None]:
        """``scores`` and ``view_scores`` together, the views searched once (they are most of the cost)."""
        per_view = self.view_scores(features)
        if per_view is None:
            return self.scores(logits, features), None
        return torch.stack(list(per_view.values())).amin(0), per_view

    def scores(self, logits: Tensor, features: Mapping[str, Tensor]) -> Tensor:
        """One score per row of ``logits`` (N, K), given each of ``views``' features (N, D); higher =
        more familiar."""
        if self.calibration is None:
            return energy_score(logits)
        if self.calibration.method == "energy":
            return energy_score(logits, self.calibration.temperature)
        if self.calibration.views is None:
            self._check_features(features)
            return knn_score(features[HEAD], self.bank[BANK_KEY], self.calibration.k)
        return self.scores_and_views(logits, features)[0]

    def check_widths(self, features: Mapping[str, Tensor]) -> None:
        """Refuses a bank whose feature vectors are not as wide as ``features``, the network's (a bank
        made for another network would fail every request instead)."""
        if self.bank is None:
            return
        self._check_features(features)
        for view in self.views:
            stored = self.bank[BANK_KEY if self.calibration.views is None else f"{view}/features"].shape[1]
            if features[view].shape[1] != stored:
                raise OODError(f"the bank's {view!r} features have {stored} values; this network's have "
                               f"{features[view].shape[1]}")

    def _check_features(self, features: Mapping[str, Tensor]) -> None:
        missing = [view for view in self.views if view not in features]
        if missing:
            raise OODError(f"the knn score needs the features of the views {missing}")


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


def calibrate_knn(train_features: Mapping[str, Tensor], *, data: str, bank_file: str,
                  test_features: Mapping[str, Tensor] | None = None, tpr: float = 0.95, k: int = 5,
                  bank_size: int = 5000, seed: int = 0) -> tuple[OODCalibration, bytes]:
    """The knn calibration over the views ``train_features`` holds (view -> (N, D), ``view_features``)
    and its bank file's bytes (safetensors). The same ``bank_size`` training images, drawn with
    ``seed``, make each view's bank (unit length, float16); each view's scores on the other training
    images are kept as quantiles, and the threshold on the smallest percentile keeps ``tpr`` of those
    images. ``bank_file`` is the name the bytes are to be saved under, beside the manifest."""
    if not train_features:
        raise OODError("calibrate_knn needs the features of at least one view")
    views = tuple(train_features)
    for view in views:
        parse_view(view)
    count = len(next(iter(train_features.values())))
    if any(len(f) != count for f in train_features.values()) or (
            test_features is not None and len({len(test_features[v]) for v in views}) != 1):
        raise OODError("every view needs the features of the same images")
    if not 1 <= k <= bank_size < count:
        raise OODError(f"need 1 <= k <= bank size < training images; got k={k}, bank size {bank_size}, "
                       f"{count} training images")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    tensors = {}
    for view in views:
        bank = F.normalize(train_features[view][order[:bank_size]].double(), dim=-1).half().contiguous()
        # scored with the bank exactly as shipped (float16), so the quantiles fit what the app computes
        held_out = knn_score(train_features[view][order[bank_size:]], bank.double(), k)
        levels = torch.linspace(0, 1, QUANTILES, dtype=torch.float64)
        tensors[f"{view}/features"] = bank
        tensors[f"{view}/quantiles"] = torch.quantile(held_out, levels).float().contiguous()
    payload = save_tensors(tensors)
    calibration = OODCalibration(method="knn", temperature=None, data=data, score=VIEWS_SCORE, k=k, bank=bank_file,
                                 bank_sha256=hashlib.sha256(payload).hexdigest(), bank_images=bank_size, views=views,
                                 threshold=0.0, tpr_target=tpr, train_tpr=0.0, test_fraction_flagged=None,
                                 train_images=count - bank_size)
    scorer = OODScorer(calibration, {key: t.double() for key, t in load_tensors(payload).items()})
    train_scores = scorer.scores(torch.empty(0), {v: f[order[bank_size:]] for v, f in train_features.items()})
    test_scores = None if test_features is None else scorer.scores(torch.empty(0), test_features)
    return replace(calibration, **_choose(train_scores, tpr, test_scores)), payload


def _check_bank(bank: Mapping[str, Tensor], calibration: OODCalibration, where: str) -> None:
    """Refuses a bank that lacks a view's features or quantiles or holds another number of images."""
    views = calibration.views
    keys = [BANK_KEY] if views is None else [f"{v}/{part}" for v in views for part in ("features", "quantiles")]
    missing = [key for key in keys if key not in bank]
    if missing:
        raise OODError(f"{where} lacks {', '.join(map(repr, missing))}")
    for key in keys:
        tensor = bank[key]
        if key.endswith("quantiles"):
            if tensor.ndim != 1 or len(tensor) < 2:
                raise OODError(f"{where}: {key!r} is not a list of quantiles")
        elif tensor.ndim != 2 or len(tensor) != calibration.bank_images:
            raise OODError(f"{where} does not hold {calibration.bank_images} feature vectors under {key!r}")


def read_bank(path: Path, calibration: OODCalibration) -> dict[str, Tensor]:
    """The bank file a knn calibration names (each view's features and quantiles), checked against its
    sha256 and the calibration, as float64."""
    try:
        payload = Path(path).read_bytes()
    except OSError as exc:
        raise OODError(f"cannot read the OOD bank {path}: {exc.strerror or exc}") from exc
    actual = hashlib.sha256(payload).hexdigest()
    if actual != calibration.bank_sha256:
        raise OODError(f"OOD bank {path} is corrupt or not this calibration's: sha256 {actual[:12]}... != "
                       f"expected {calibration.bank_sha256[:12]}...")
    bank = {key: tensor.double() for key, tensor in load_tensors(payload).items()}
    _check_bank(bank, calibration, f"OOD bank {path}")
    return bank
