"""The inference service: runs the model on one picture and packages predictions and soft masks.

Not web code: the app and the CLI both use it.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import render
from .network import AttentionOutput, Intermediates, ResidualAttentionNet, describe
from .preprocess import model_view
from .ood import OODCalibration, OODError, OODScorer, float32_beside, floor_to, parse_view, read_bank, view_features
from .registry import get_model
from .weights import Weights, WeightsError, resolve_weights


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class ModuleAttention:
    module: str
    stage: int
    mask: np.ndarray  # (C, h, w) float32 in (0, 1)
    trunk: np.ndarray  # (C, h, w) float32, T(x) before (1 + M) is applied

    @property
    def channels(self) -> int:
        return int(self.mask.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mask.shape[1]), int(self.mask.shape[2]))

    def reduced(self, reduction: str = "mean", channel: int = 0) -> np.ndarray:
        return render.reduce_mask(self.mask, reduction, channel, trunk=self.trunk)


@dataclass(frozen=True)
class Explanation:
    model: str
    weights: str
    image: Image.Image  # as uploaded, orientation fixed, RGB
    model_input: Image.Image  # the crop the model saw, at its input size
    predictions: list[Prediction]
    probabilities: np.ndarray
    attention: list[ModuleAttention]
    timing_ms: dict[str, float] = field(default_factory=dict)
    ood_score: float = float("nan")  # the calibration's score (ranlens.model.ood): higher = more familiar
    ood: OODCalibration | None = None  # None: the weights have no calibration, so no verdict
    # each view's training percentile, of which ood_score is the smallest; None: a calibration without views
    ood_views: dict[str, float] | None = None

    @property
    def ood_threshold(self) -> float | None:
        return None if self.ood is None else self.ood.threshold

    @property
    def out_of_distribution(self) -> bool | None:
        """True: unlike the training images, the classes are a forced choice; None: not calibrated."""
        return None if self.ood is None else self.ood.flagged(self.ood_score)

    def ood_fields(self) -> dict:
        return ood_fields(self.ood_score, self.ood_views, self.ood)

    def top(self, k: int) -> list[Prediction]:
        return self.predictions[:k]

    def save(self, directory: Path, stem: str, cmap: str = "viridis", alpha: float = 0.6,
             display_size: int = 256) -> dict:
        """Writes per-module overlay PNGs and raw masks (.npy); returns a manifest entry."""
        directory.mkdir(parents=True, exist_ok=True)
        display = model_view(self.image, self.model_input.width, display_size)
        display.save(directory / f"{stem}.input.png")
        modules = []
        for a in self.attention:
            values = a.reduced("mean")
            safe = a.module.replace(".", "_")
            render.overlay(display, values, cmap, alpha).save(directory / f"{stem}.{safe}.png")
            np.save(directory / f"{stem}.{safe}.npy", a.mask)
            modules.append({
                "module": a.module, "stage": a.stage, "shape": list(a.shape), "channels": a.channels,
                "min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
                "overlay": f"{stem}.{safe}.png", "mask": f"{stem}.{safe}.npy",
            })
        return {
            "input": f"{stem}.input.png",
            "predictions": [p.__dict__ for p in self.predictions[:5]],
            **self.ood_fields(),
            "attention": modules,
        }


def ood_fields(score: float, views: dict[str, float] | None, calibration: OODCalibration | None) -> dict:
    """A picture's out-of-distribution verdict as the API and manifests give it: the score and the
    views' percentiles rounded down to 4 decimals (the threshold's precision), so that a client's
    ``ood_score < ood_threshold`` is the flag, and threshold and flag None without a calibration."""
    return {
        "ood_score": floor_to(score),
        "ood_views": None if views is None else {v: floor_to(p) for v, p in views.items()},
        "ood_threshold": None if calibration is None else calibration.threshold,
        "out_of_distribution": None if calibration is None else calibration.flagged(score),
    }


log = logging.getLogger(__name__)


class _FlatOutputs(torch.nn.Module):
    """forward_intermediates as a flat tuple (logits, features, masks..., trunks...): what tracing can record."""

    def __init__(self, model: ResidualAttentionNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.forward_intermediates(x)
        return (out.logits, out.features, *(a.mask for a in out.attention), *(a.trunk for a in out.attention))


class Explainer:
    """Holds one loaded model; ``explain`` is thread-safe (no state changes after load and ``trace``)."""

    def __init__(self, model: ResidualAttentionNet, weights: Weights) -> None:
        self.model = model.eval()
        self.weights = weights
        self.preprocess = weights.transforms()
        self.modules = describe(model, (weights.input_size, weights.input_size))
        self._traced: torch.jit.ScriptModule | None = None
        try:
            self.ood = None if weights.ood is None else OODCalibration.from_manifest(weights.ood)
            # checked before the bank is read: a wrong module name says so, not that the bank lacks it
            unknown = [v for v in (self.ood and self.ood.views) or () if (parse_view(v) or (None,))[0]
                       not in (None, *model.module_names)]
            if unknown:
                raise OODError(f"the OOD views {unknown} name modules this network lacks; it has {model.module_names}")
            bank = read_bank(weights.companion(self.ood.bank), self.ood) if self.ood and self.ood.bank else None
            self.scorer = OODScorer(self.ood, bank)
            if bank is not None:
                size = weights.input_size
                with torch.inference_mode():
                    probe = model.forward_intermediates(torch.zeros(1, 3, size, size))
                self.scorer.check_widths(view_features(probe, self.scorer.views))
        except OODError as exc:
            raise WeightsError(f"weights {weights.name}: {exc}") from exc

    @classmethod
    def load(cls, arch: str = "attention56_cifar", weights: str = "DEFAULT") -> Explainer:
        resolved = resolve_weights(arch, weights)
        return cls(get_model(resolved.arch, weights=resolved), resolved)

    @property
    def name(self) -> str:
        return self.weights.arch

    @property
    def traced(self) -> bool:
        return self._traced is not None

    def trace(self, check_batch: int = 3) -> bool:
        """Runs the intact network's inference (``explain``, ``infer``) through a TorchScript trace.

        The trace runs in C++ and releases the GIL for the whole forward, where the Python forward
        takes it back between layers: on a server whose other threads parse requests, that wait was
        most of a small model's forward, and it kept several torch threads from running forwards at
        once (``model/torch_thread.py``). The trace is checked against the Python forward on a batch
        of another size than it was traced with; any failure (or a torch without ``torch.jit``)
        leaves the Python forward in place, logged, and returns False. Ablations (``masks_off``) and
        gradients always use the Python forward.
        """
        size = self.weights.input_size
        generator = torch.Generator().manual_seed(0)
        example = torch.rand(2, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
        check = torch.rand(check_batch, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
        flat = _FlatOutputs(self.model).eval()
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                # torch.jit says it is deprecated (FutureWarning); the check below guards the result
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(flat, example, check_trace=False)
                for _ in range(3):  # TorchScript profiles its first runs, then optimises
                    got = traced(check)
                want = flat(check)
            if len(got) != len(want) or any(g.shape != w.shape or not torch.allclose(g, w, rtol=1e-4, atol=1e-5)
                                             for g, w in zip(got, want)):
                raise RuntimeError("the traced forward does not match the Python forward")
        except Exception as exc:  # noqa: BLE001 - any failure: keep the Python forward, say why
            log.warning("%s: serving the Python forward, tracing failed: %s", self.weights.name, exc)
            return False
        self._traced = traced
        return True

    def _intermediates(self, x: torch.Tensor) -> Intermediates:
        """The intact network's outputs for a (N, 3, H, W) batch, traced when ``trace`` succeeded."""
        if self._traced is None:
            return self.model.forward_intermediates(x)
        outputs = self._traced(x)
        count = len(self.modules)
        masks, trunks = outputs[2:2 + count], outputs[2 + count:]
        return Intermediates(outputs[0], [AttentionOutput(m["module"], m["stage"], mask, trunk)
                                          for m, mask, trunk in zip(self.modules, masks, trunks)], outputs[1])

    def prepare(self, image: Image.Image) -> tuple[Image.Image, torch.Tensor]:
        """The crop the model sees and its (3, H, W) input tensor."""
        crop = self.preprocess.crop(image)
        return crop, self.preprocess.to_tensor(crop)

    def explain(self, image: Image.Image, masks_off: Collection[str] | bool = ()) -> Explanation:
        return self.explain_batch([image], masks_off)[0]

    def explain_batch(self, images: list[Image.Image], masks_off: Collection[str] | bool = ()) -> list[Explanation]:
        """One forward for several pictures; each gets exactly its own Explanation."""
        t0 = time.perf_counter()
        prepared = [self.prepare(image) for image in images]
        t1 = time.perf_counter()
        return self.run_prepared(images, prepared, masks_off, preprocess_s=t1 - t0)

    def run_prepared(self, images: list[Image.Image], prepared: list[tuple[Image.Image, torch.Tensor]],
                     masks_off: Collection[str] | bool = (), preprocess_s: float = 0.0) -> list[Explanation]:
        """The forward and packaging for pictures already through ``prepare`` (a batcher prepares
        each in its caller's thread and runs them here together)."""
        t1 = time.perf_counter()
        x = torch.stack([tensor for _, tensor in prepared]).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.model.forward_intermediates(x, masks_off=masks_off) if masks_off else self._intermediates(x)
            probs = torch.softmax(out.logits.float(), dim=1).numpy()
            scores, per_view = self._ood_scores(out)
        t2 = time.perf_counter()
        timing = {"preprocess": 1000 * preprocess_s / len(images), "inference": 1000 * (t2 - t1)}
        results = []
        for i, (image, (crop, _)) in enumerate(zip(images, prepared)):
            order = np.argsort(-probs[i], kind="stable")
            predictions = [Prediction(int(k), self.weights.classes[k], float(probs[i, k])) for k in order]
            attention = [
                ModuleAttention(a.name, a.stage, a.mask[i].float().numpy(), a.trunk[i].float().numpy())
                for a in out.attention
            ]
            results.append(Explanation(
                model=self.name, weights=self.weights.name, image=image, model_input=crop,
                predictions=predictions, probabilities=probs[i], attention=attention, timing_ms=dict(timing),
                # the calibration holds for the intact network only: an ablated one gets a score, no verdict
                ood_score=scores[i], ood=None if masks_off else self.ood,
                ood_views=None if per_view is None else {v: float(p[i]) for v, p in per_view.items()},
            ))
        return results

    def _ood_scores(self, out: Intermediates) -> tuple[list[float], dict[str, torch.Tensor] | None]:
        """Each picture's OOD score and, for a calibration with views, each view's percentiles (N,)."""
        features = view_features(out, self.scorer.views)
        scores, per_view = self.scorer.scores_and_views(out.logits.float(), features)
        return scores.tolist(), per_view

    def infer(self, x: torch.Tensor, masks: bool = False, features: bool = False,
              views: Collection[str] = (), ood: bool = False) -> dict[str, np.ndarray]:
        """Raw outputs for a preprocessed batch (N, 3, H, W): logits, probabilities and, with
        ``masks``, each module's soft mask (N, C, h, w) under ``mask:<module>``; with ``features``,
        the features (N, D) of the pooled ``head`` the classifier reads and of every view the OOD
        score reads, and of ``views``, under ``features:<view>`` (``ranlens.model.ood.view_features``);
        with ``ood``, each picture's ``ood_score`` (N,) as ``explain`` gives it, and where the weights
        are calibrated its verdict ``out_of_distribution`` (N,) bool."""
        with torch.inference_mode():
            out = self._intermediates(x.contiguous(memory_format=torch.channels_last))
            logits = out.logits.float()
            result = {"logits": logits.numpy(), "probabilities": torch.softmax(logits, dim=1).numpy()}
            if masks:
                result.update({f"mask:{a.name}": a.mask.float().numpy() for a in out.attention})
            if ood:
                scores = self._ood_scores(out)[0]
                # rounded down as ood_fields rounds them, and as float32 on the flag's side of the threshold
                result["ood_score"] = np.array([floor_to(s) for s in scores], dtype=np.float32)
                if self.ood is not None:
                    flags = np.array([self.ood.flagged(s) for s in scores])
                    result["out_of_distribution"] = flags
                    result["ood_score"] = float32_beside(result["ood_score"], flags, self.ood.threshold)
            if features:
                wanted = dict.fromkeys(("head", *self.scorer.views, *views))
                result.update({f"features:{v}": f.numpy() for v, f in view_features(out, wanted).items()})
        return result

    def ablate(self, image: Image.Image, top_k: int = 5) -> dict:
        """Predictions with attention on, with every mask set to zero, and with one module's mask
        at a time set to zero (M = 0 turns a module into its trunk path); and the intact network's
        out-of-distribution verdict, as ``explain`` gives it (the calibration holds for it alone)."""
        x = self.preprocess(image).unsqueeze(0).contiguous(memory_format=torch.channels_last)
        names = self.model.module_names
        variants = {"normal": (), "all_off": names, **{f"off:{n}": (n,) for n in names}}
        results = {}
        with torch.inference_mode():
            intact = self._intermediates(x)
            scores, per_view = self._ood_scores(intact)
            verdict = ood_fields(scores[0], None if per_view is None else {v: float(p[0]) for v, p in per_view.items()},
                                 self.ood)
            for key, off in variants.items():
                logits = intact.logits[0] if not off else self.model(x, masks_off=off)[0]
                probs = torch.softmax(logits.float(), dim=0)
                top = probs.topk(min(top_k, probs.numel()))
                results[key] = {
                    "masks_off": list(off),
                    "probabilities": probs.tolist(),
                    "top": [{"index": int(i), "label": self.weights.classes[int(i)], "probability": float(p)}
                            for p, i in zip(top.values, top.indices)],
                }
        return {
            "model": self.name, "weights": self.weights.name, "predicted": results["normal"]["top"][0]["label"],
            "normal": results["normal"], "all_off": results["all_off"],
            "per_module": [{"module": n, **results[f"off:{n}"]} for n in names],
            **verdict,
        }

    def metadata(self) -> dict:
        w = self.weights
        return {
            "name": w.arch, "weights": w.name, "sha256": w.sha256, "classes": list(w.classes),
            "input_size": [w.input_size, w.input_size], "mean": list(w.mean), "std": list(w.std),
            "modules": self.modules, "metrics": w.metrics, "recipe": w.recipe,
            "ood": None if self.ood is None else self.ood.manifest(),
            "traced": self.traced,
        }


def write_manifest(entries: dict, path: Path) -> None:
    path.write_text(json.dumps(entries, indent=2))
