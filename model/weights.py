"""Checkpoint descriptions in the style of torchvision's ``WeightsEnum``.

Each shipped checkpoint is a safetensors file in ``model/weights/`` with a JSON manifest beside it
(written by ``ranlens export`` and ``ranlens evaluate --write-metrics``): file, sha256, classes,
input size, mean/std, training recipe and the metrics measured on the test split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .preprocess import Preprocess

__all__ = [
    "DEFAULT_WEIGHTS",
    "WEIGHTS_DIR",
    "Preprocess",
    "Weights",
    "WeightsError",
    "get_weights",
    "resolve_weights",
    "list_weights",
    "save_checkpoint",
    "sha256_of",
    "write_atomically",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# What ``weights="DEFAULT"`` means for each architecture, as torchvision's ``Weights.DEFAULT``: a
# deliberate choice, changed in the commit that ships a better checkpoint, never implied by file names.
DEFAULT_WEIGHTS: dict[str, str] = {
    "attention56_cifar": "attention56_cifar.v8",
    "attention92_cifar": "attention92_cifar.v8",
}

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


@functools.cache
def _manifest_fields() -> TypeAdapter:
    """Checks a manifest's field types (a ``null`` metrics or a text input_size would fail later, far from the file)."""
    return TypeAdapter(Weights)


class WeightsError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the architecture."""


def write_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a file beside it that is renamed over it: a reader (a server
    listing manifests, a resume reading config.json) finds the old file or the new one, never half of
    one, and a write stopped midway leaves the old one. The partial file ends in ``.tmp``, so no
    ``*.json`` listing reads it, and carries the process id, so two writers never share one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    # the out-of-distribution calibration (``ranlens calibrate-ood``); None: not calibrated yet
    ood: dict[str, Any] | None = None
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
        if data["ood"] is None:  # manifests written before calibration existed stay as they were
            data.pop("ood")
        return data

    def write_manifest(self) -> Path:
        target = self.directory / f"{self.name}.json"
        write_atomically(target, json.dumps(self.manifest(), indent=2) + "\n")
        return target

    @classmethod
    def from_manifest(cls, path: Path) -> Weights:
        """Reads a manifest; one that is not JSON, lacks a field or has one of the wrong type is a
        ``WeightsError`` naming the file (a server loading several models skips it and keeps the others)."""
        text = Path(path).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WeightsError(f"weights manifest {path} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise WeightsError(f"weights manifest {path} is not a weights manifest: not a JSON object")
        try:
            return _manifest_fields().validate_python({**data, "directory": Path(path).parent})
        except ValidationError as exc:
            missing = [e["loc"][0] for e in exc.errors() if e["type"] == "missing" and len(e["loc"]) == 1]
            if missing:
                raise WeightsError(f"weights manifest {path} lacks the field {missing[0]!r}") from None
            wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise WeightsError(f"weights manifest {path} is not a weights manifest: {wrong}") from None

    def _fetch(self, progress: bool) -> None:
        if self.url is None:
            raise WeightsError(f"weights file {self.path} is missing and {self.name} has no download URL")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(self.url, str(self.path), hash_prefix=None, progress=progress)

    def companion(self, file: str, progress: bool = True) -> Path:
        """A file published beside the checkpoint (its OOD bank): here, or fetched from beside its URL;
        the caller checks it (its hash is in the manifest entry that names it)."""
        path = self.directory / file
        if not path.is_file() and self.url is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(f"{self.url.rsplit('/', 1)[0]}/{file}", str(path), progress=progress)
        return path

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
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"arch": arch, **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return sha256_of(path)


def version_key(name: str) -> tuple:
    """Sorts names as people read versions: ``x.v9`` before ``x.v10``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name))


def list_weights(arch: str | None = None, directory: Path = WEIGHTS_DIR) -> list[Weights]:
    """Every readable manifest in ``directory`` (for ``arch``), oldest version first.

    An unreadable manifest is skipped with a warning: it must not hide the others.
    """
    found = []
    for path in directory.glob("*.json"):
        try:
            found.append(Weights.from_manifest(path))
        except (OSError, WeightsError) as exc:
            warnings.warn(f"skipping unreadable weights manifest {path}: {exc}", stacklevel=2)
    found.sort(key=lambda w: version_key(w.name))
    return [w for w in found if arch is None or w.arch == arch]


def resolve_weights(arch: str | None, spec: str) -> Weights:
    """A manifest path (``*.json``, whatever its architecture) or a name: a name or ``DEFAULT`` for
    ``arch``, or with ``arch`` None any shipped weights' name (``attention56_cifar.v7``)."""
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise WeightsError(f"weights manifest {path} not found")
        return Weights.from_manifest(path)
    if arch is not None:
        return get_weights(arch, spec)
    shipped = list_weights()
    for weights in shipped:
        if weights.name == spec:
            return weights
    raise WeightsError(f"unknown weights {spec!r}: name shipped weights ({', '.join(w.name for w in shipped)}) "
                       "or a manifest path (*.json)")


def get_weights(arch: str, weights: Weights | str, directory: Path = WEIGHTS_DIR) -> Weights:
    """Resolves a weights object, a weights name, or ``"DEFAULT"`` (``DEFAULT_WEIGHTS[arch]``),
    looking names up among the manifests in ``directory``."""
    if isinstance(weights, Weights):
        if weights.arch != arch:
            raise WeightsError(f"weights {weights.name} are for {weights.arch}, not {arch}")
        return weights
    available = list_weights(arch, directory)
    if weights == "DEFAULT":
        if arch not in DEFAULT_WEIGHTS:
            raise WeightsError(f"no weights are shipped for {arch}")
        weights = DEFAULT_WEIGHTS[arch]
    for w in available:
        if w.name == weights:
            return w
    raise WeightsError(f"unknown weights {weights!r} for {arch}; have {[w.name for w in available]}")
