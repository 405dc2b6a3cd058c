"""Checkpoint descriptions in the style of torchvision's ``WeightsEnum``.

Each shipped checkpoint is a safetensors file in ``model/weights/`` with a JSON manifest beside it
(written by ``ranlens export`` and ``ranlens evaluate --write-metrics``): file, sha256, classes,
input size, mean/std, training recipe and the metrics measured on the test split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchvision.transforms import functional as TF

__all__ = [
    "WEIGHTS_DIR",
    "Preprocess",
    "Weights",
    "WeightsError",
    "center_crop",
    "get_weights",
    "resolve_weights",
    "list_weights",
    "save_checkpoint",
    "sha256_of",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


class WeightsError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the architecture."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """RGB, shorter side resized to ``size`` (antialiased), centre square of ``size``."""
    image = TF.resize(image.convert("RGB"), size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(image, [size, size])


@dataclass(frozen=True)
class Preprocess:
    """Shorter side resized to ``size``, centre crop, scaled to [0, 1], normalised.

    ``crop`` gives the picture the model sees, so the app can draw masks on exactly that.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def crop(self, image: Image.Image) -> Image.Image:
        return center_crop(image, self.size)

    def to_tensor(self, cropped: Image.Image) -> Tensor:
        return TF.normalize(TF.to_tensor(cropped), list(self.mean), list(self.std))

    def __call__(self, image: Image.Image) -> Tensor:
        return self.to_tensor(self.crop(image))


@dataclass(frozen=True)
class Weights:
    name: str
    arch: str
    file: str
    sha256: str
    classes: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    directory: Path = WEIGHTS_DIR

    @property
    def path(self) -> Path:
        return self.directory / self.file

    def transforms(self) -> Preprocess:
        return Preprocess(self.input_size, tuple(self.mean), tuple(self.std))

    def manifest(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        return data

    def write_manifest(self) -> Path:
        target = self.directory / f"{self.name}.json"
        target.write_text(json.dumps(self.manifest(), indent=2) + "\n")
        return target

    @classmethod
    def from_manifest(cls, path: Path) -> Weights:
        data = json.loads(Path(path).read_text())
        data["classes"] = tuple(data["classes"])
        data["mean"] = tuple(data["mean"])
        data["std"] = tuple(data["std"])
        return cls(directory=Path(path).parent, **data)

    def _fetch(self, progress: bool) -> None:
        if self.url is None:
            raise WeightsError(f"weights file {self.path} is missing and {self.name} has no download URL")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(self.url, str(self.path), hash_prefix=None, progress=progress)

    def state_dict(self, progress: bool = True) -> dict[str, Tensor]:
        """Reads the checkpoint after checking its sha256."""
        if not self.path.is_file():
            self._fetch(progress)
        actual = sha256_of(self.path)
        if actual != self.sha256:
            raise WeightsError(
                f"weights file {self.path} is corrupt or not {self.name}: "
                f"sha256 {actual[:12]}… != expected {self.sha256[:12]}…"
            )
        return read_checkpoint(self.path, expected_arch=self.arch)

    def load_into(self, model: nn.Module, progress: bool = True) -> None:
        load_state_checked(model, self.state_dict(progress=progress), source=str(self.path))


def read_checkpoint(path: Path, expected_arch: str | None = None) -> dict[str, Tensor]:
    """Loads a safetensors checkpoint; checks the architecture recorded in its metadata."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from exc
    arch = metadata.get("arch")
    if expected_arch is not None and arch != expected_arch:
        raise WeightsError(f"checkpoint {path} holds architecture {arch!r}, expected {expected_arch!r}")
    return state


def load_state_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: {few(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {few(unexpected)}")
        if wrong:
            problems.append(
                f"{len(wrong)} of another shape: "
                + few([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong])
            )
        raise WeightsError(f"checkpoint {source} does not fit this architecture: " + "; ".join(problems))
    model.load_state_dict(state)


def save_checkpoint(model: nn.Module, path: Path, arch: str, extra: dict[str, str] | None = None) -> str:
    """Writes the model's state as safetensors (fp32, contiguous) and returns its sha256."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"arch": arch, **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return sha256_of(path)


def list_weights(arch: str | None = None, directory: Path = WEIGHTS_DIR) -> list[Weights]:
    found = [Weights.from_manifest(p) for p in sorted(directory.glob("*.json"))]
    return [w for w in found if arch is None or w.arch == arch]


def resolve_weights(arch: str, spec: str) -> Weights:
    """A manifest path (``*.json``, whatever its architecture) or a name/``DEFAULT`` for ``arch``."""
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise WeightsError(f"weights manifest {path} not found")
        return Weights.from_manifest(path)
    return get_weights(arch, spec)


def get_weights(arch: str, weights: Weights | str) -> Weights:
    """Resolves a weights object, a weights name, or ``"DEFAULT"`` (newest for ``arch``)."""
    if isinstance(weights, Weights):
        if weights.arch != arch:
            raise WeightsError(f"weights {weights.name} are for {weights.arch}, not {arch}")
        return weights
    available = list_weights(arch)
    if weights == "DEFAULT":
        if not available:
            raise WeightsError(f"no weights are shipped for {arch}")
        return available[-1]
    for w in available:
        if w.name == weights:
            return w
    raise WeightsError(f"unknown weights {weights!r} for {arch}; have {[w.name for w in available]}")
