"""The set of models a server holds: every shipped default, or the weights a deployment names.

Not web code: the app serves a catalog, the CLI can load one. A model is asked for by its weights
name (``attention92_cifar.v8``) or its architecture (``attention92_cifar``, meaning the best loaded
weights of it); no name means the catalog's default, the loaded model with the best recorded top-1
unless the deployment chose one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .explainer import Explainer
from .registry import get_model
from .weights import DEFAULT_WEIGHTS, WeightsError, list_weights, resolve_weights

__all__ = ["Catalog", "UnknownModel", "load_catalog", "weights_specs"]


class UnknownModel(KeyError):
    """A name the catalog does not hold; the message lists the ones it does."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def _top1(explainer: Explainer) -> float:
    top1 = explainer.weights.metrics.get("top1")
    return float(top1) if isinstance(top1, (int, float)) else -1.0


def weights_specs(weights: str, arch: str = "") -> list[tuple[str, str]]:
    """``(arch, spec)`` pairs from a comma-separated setting: ``DEFAULT`` (every architecture with
    shipped default weights, or only ``arch``'s), weights names, and manifest paths (``*.json``)."""
    pairs: list[tuple[str, str]] = []
    for spec in (s.strip() for s in weights.split(",")):
        if not spec:
            continue
        if spec == "DEFAULT":
            pairs += [(arch, "DEFAULT")] if arch else [(a, "DEFAULT") for a in DEFAULT_WEIGHTS]
        elif spec.endswith(".json"):
            pairs.append(("", spec))
        else:  # a weights name says its architecture through its manifest
            owner = next((w.arch for w in list_weights() if w.name == spec), arch)
            pairs.append((owner, spec))
    if not pairs:
        raise WeightsError("no weights named: give DEFAULT, weights names, or manifest paths, separated by commas")
    return pairs


@dataclass(frozen=True)
class Catalog:
    explainers: tuple[Explainer, ...]
    default_weights: str  # the weights name that answers when a request names no model

    def __post_init__(self) -> None:
        if not self.explainers:
            raise ValueError("a catalog holds at least one model")
        names = [e.weights.name for e in self.explainers]
        if len(set(names)) != len(names):
            raise ValueError(f"weights loaded twice: {names}")
        if self.default_weights not in names:
            raise ValueError(f"default {self.default_weights!r} is not among the loaded weights {names}")

    @property
    def default(self) -> Explainer:
        return self.get(None)

    def names(self) -> list[str]:
        """Every name a request may use: architectures first, then weights names."""
        archs = list(dict.fromkeys(e.name for e in self.explainers))
        return archs + [e.weights.name for e in self.explainers if e.weights.name not in archs]

    def get(self, name: str | None) -> Explainer:
        if name is None:
            name = self.default_weights
        for e in self.explainers:
            if e.weights.name == name:
                return e
        of_arch = [e for e in self.explainers if e.name == name]
        if not of_arch:
            raise UnknownModel(f"this server has no model {name!r}; it serves {', '.join(self.names())}")
        default = self.get(None)
        return default if default.name == name else max(of_arch, key=_top1)

    def __iter__(self):
        return iter(self.explainers)

    def __len__(self) -> int:
        return len(self.explainers)


def load_catalog(weights: str = "DEFAULT", arch: str = "", default: str = "") -> tuple[Catalog | None, list[str]]:
    """Loads every model the settings name; returns the catalog of those that loaded (None if none
    did) and one message per model that did not, so a server can keep serving the rest and say why."""
    explainers: list[Explainer] = []
    errors: list[str] = []
    try:
        specs = weights_specs(weights, arch)
    except WeightsError as exc:
        return None, [str(exc)]
    for owner, spec in specs:
        try:
            explainer = Explainer(*_model_and_weights(owner, spec))
        except Exception as exc:  # noqa: BLE001 - whatever stops one model, the others still serve
            errors.append(f"{spec}: {exc}")
            continue
        if all(e.weights.name != explainer.weights.name for e in explainers):
            explainers.append(explainer)
    if not explainers:
        return None, errors
    if default:
        # an architecture's name means its best loaded weights, as in a request
        named = [e for e in explainers if e.weights.name == default] or [e for e in explainers if e.name == default]
        chosen = max(named, key=_top1).weights.name if named else None
        if chosen is None:
            errors.append(f"default model {default!r} is not among the loaded {[e.weights.name for e in explainers]}")
            # answer as if no default had been set (the best top-1), not whichever model came first;
            # the error keeps the server unready, so the misconfiguration shows
            chosen = max(explainers, key=_top1).weights.name
    else:
        chosen = max(explainers, key=_top1).weights.name  # max keeps the first of equals: settings order
    return Catalog(tuple(explainers), chosen), errors


def _model_and_weights(arch: str, spec: str):
    resolved = resolve_weights(arch or None, spec)  # no architecture: the name must be a shipped one
    return get_model(resolved.arch, weights=resolved), resolved
