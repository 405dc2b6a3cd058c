"""Out-of-distribution scores: the energy and k-nearest-neighbour scores, the threshold chosen on training
data, and the verdict the model, the API and the command line give on pictures unlike the training images."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from ranlens.app.core.config import Settings
from ranlens.app.main import create_app
from ranlens.model.explainer import Explainer
from ranlens.model.imaging import decode_image
from ranlens.model.ood import (OODCalibration, OODError, OODScorer, calibrate, calibrate_knn, energy_score,
                                kept_fraction, knn_score, percentile, read_bank, threshold_for_tpr, view_features)
from ranlens.model.weights import Weights, WeightsError, get_weights

from .conftest import CIFAR_FIXTURES, PHOTOS

NOISE_SEEDS = range(5)
THREADS = int(os.environ.get("RANLENS_TEST_THREADS", "2"))


def noise(seed: int, size: int = 256) -> Image.Image:
    """Uniform noise as a picture someone might upload (the model sees it shrunk to 32x32, which
    averages neighbouring pixels into a softer noise), or at the model's input size."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def uncalibrated_manifest(directory: Path) -> Path:
    """The default weights under another name, with their manifest as it was before calibration."""
    shipped = get_weights("attention56_cifar", "DEFAULT")
    (directory / shipped.file).symlink_to(shipped.path)
    copy = dataclasses.replace(shipped, name="uncalibrated", ood=None, directory=directory)
    return copy.write_manifest()


# ---- the pure functions

def test_energy_score_is_logsumexp_of_the_logits_computed_by_hand():
    logits = [1.0, 2.0, 3.0]
    by_hand = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert float(energy_score(logits)) == pytest.approx(by_hand, abs=1e-12)
    # temperature T: T * log sum exp(l / T)
    assert float(energy_score(logits, temperature=2.0)) == pytest.approx(
        2 * math.log(sum(math.exp(v / 2) for v in logits)), abs=1e-12)
    # one score per row, and no overflow for logits exp() cannot hold
    scores = energy_score(torch.tensor([[1000.0, 1000.0], [0.0, 0.0]]))
    assert scores.tolist() == pytest.approx([1000 + math.log(2), math.log(2)])
    with pytest.raises(OODError, match="temperature"):
        energy_score(logits, temperature=0)


@pytest.mark.parametrize("n", [1, 19, 20, 21, 101, 10_000])
def test_threshold_keeps_95_percent_of_a_sample(n):
    scores = np.random.default_rng(n).normal(8, 2, n)
    threshold = threshold_for_tpr(scores, 0.95)
    kept = kept_fraction(scores, threshold)
    assert kept >= 0.95
    # and no more than the one score the floor lets in, plus the rounding of the threshold to 4 decimals
    assert (scores >= threshold).sum() <= math.ceil(0.95 * n) + 1
    assert threshold == round(threshold, 4)


def test_a_score_one_float_step_below_a_rounded_value_is_still_kept():
    """-0.9994000000000001 * 10**4 is exactly -9994.0 in floats: floored, the threshold came out above
    the score it was chosen to keep."""
    scores = np.array([-2.0, -0.9994000000000001] + [1.0] * 18)  # of 20, the lowest may fall below
    threshold = threshold_for_tpr(scores, 0.95)
    assert threshold <= scores[1] and threshold == round(threshold, 4)
    assert kept_fraction(scores, threshold) >= 0.95


@pytest.mark.parametrize("score", [0.02566, 0.0257, 0.025699999999999997, 0.02574, -0.9994000000000001, 0.5])
def test_the_rounded_score_compares_with_the_threshold_as_the_flag_says(score):
    """The API rounds scores to the threshold's 4 decimals: rounded to nearest, 0.02566 showed as 0.0257,
    not below a threshold of 0.0257, beside a flag that said it was."""
    from ranlens.model.explainer import ood_fields

    calibration = OODCalibration(method="energy", temperature=1.0, threshold=0.0257, tpr_target=0.95,
                                 train_tpr=0.95, test_fraction_flagged=None, data="test", train_images=20)
    fields = ood_fields(score, {"head": score}, calibration)
    assert fields["out_of_distribution"] == (fields["ood_score"] < fields["ood_threshold"])
    assert fields["ood_views"]["head"] == fields["ood_score"] <= score


def test_a_score_at_the_threshold_shows_as_the_threshold():
    """0.3465 * 1e4 is 3464.9999999999995 in floats: floored plainly, a score equal to the threshold
    (not flagged) showed one step below it."""
    from ranlens.model.explainer import ood_fields

    calibration = OODCalibration(method="energy", temperature=1.0, threshold=0.3465, tpr_target=0.95,
                                 train_tpr=0.95, test_fraction_flagged=None, data="test", train_images=20)
    fields = ood_fields(0.3465, None, calibration)
    assert fields["out_of_distribution"] is False and fields["ood_score"] == 0.3465


def test_float32_scores_stay_on_their_flags_side_of_the_threshold():
    """/v2 sends ood_score as FP32: the nearest float32 of 0.0257 is below 0.0257."""
    from ranlens.model.ood import float32_beside

    assert float(np.float32(0.0257)) < 0.0257  # the trap
    out = float32_beside(np.array([0.0257, 0.0256, math.nan]), np.array([False, True, True]), 0.0257)
    assert out.dtype == np.float32 and float(out[0]) >= 0.0257 and float(out[1]) < 0.0257 and math.isnan(out[2])
    assert abs(float(out[0]) - 0.0257) < 1e-8


def test_a_score_that_is_no_number_is_flagged_not_a_crash():
    from ranlens.model.explainer import ood_fields

    calibration = OODCalibration(method="energy", temperature=1.0, threshold=0.0257, tpr_target=0.95,
                                 train_tpr=0.95, test_fraction_flagged=None, data="test", train_images=20)
    fields = ood_fields(math.nan, {"head": math.nan}, calibration)
    assert fields["out_of_distribution"] is True and math.isnan(fields["ood_score"])


def test_one_search_gives_the_score_and_every_views_percentile():
    """The server reads both the score and each view's percentile: scores_and_views gives the same as
    scores and view_scores called apart, for a calibration with views and for the energy score."""
    explainer = Explainer.load("attention56_cifar", "DEFAULT")
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        out = explainer.model.forward_intermediates(x)
        features = view_features(out, explainer.scorer.views)
        both, per_view = explainer.scorer.scores_and_views(out.logits, features)
        assert per_view is not None and torch.equal(both, explainer.scorer.scores(out.logits, features))
        for view, values in explainer.scorer.view_scores(features).items():
            assert torch.equal(per_view[view], values)
        energy = OODScorer(None, None)
        scores, none = energy.scores_and_views(out.logits, {})
        assert none is None and torch.equal(scores, energy.scores(out.logits, {}))


def test_threshold_with_ties_and_impossible_rates():
    assert kept_fraction(np.full(40, 3.0), threshold_for_tpr(np.full(40, 3.0))) == 1.0
    with pytest.raises(OODError, match="tpr"):
        threshold_for_tpr([1.0, 2.0], tpr=0)
    with pytest.raises(OODError, match="no scores"):
        threshold_for_tpr([])


def test_calibrate_records_what_it_measured():
    rng = np.random.default_rng(0)
    train, test = torch.from_numpy(rng.normal(0, 3, (2000, 10))), torch.from_numpy(rng.normal(0, 1, (500, 10)))
    result = calibrate(train, data="synthetic", test_logits=test)
    assert result.method == "energy" and result.temperature == 1.0 and result.data == "synthetic"
    assert result.train_images == 2000 and result.test_images == 500
    assert result.train_tpr == round(kept_fraction(energy_score(train), result.threshold), 4) >= 0.95
    # the test logits are flatter, so their scores are lower and many fall below the line
    assert result.test_fraction_flagged == round(1 - kept_fraction(energy_score(test), result.threshold), 4) > 0.3
    assert OODCalibration.from_manifest(json.loads(json.dumps(result.manifest()))) == result
    assert result.flagged(result.threshold - 1e-6) and not result.flagged(result.threshold)
    assert result.flagged(math.nan)  # a score that is no number is no evidence of a familiar picture


def test_knn_score_is_the_distance_to_the_kth_nearest_unit_vector_computed_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    # (3, 4) has unit length (0.6, 0.8): distances sqrt(0.8), sqrt(0.4), sqrt(3.2) to the bank
    scores = knn_score(torch.tensor([[3.0, 4.0], [-2.0, 0.0]]), bank, k=2)
    assert scores.tolist() == pytest.approx([-math.sqrt(0.8), -math.sqrt(2.0)])
    assert knn_score(torch.tensor([[0.0, 5.0]]), bank, k=1).tolist() == pytest.approx([0.0])
    with pytest.raises(OODError, match="k must be 1..3"):
        knn_score(torch.ones(1, 2), bank, k=4)


def test_percentile_reads_the_share_of_held_out_scores_below():
    quantiles = torch.quantile(torch.arange(101, dtype=torch.float64), torch.linspace(0, 1, 11, dtype=torch.float64))
    assert percentile(torch.tensor([-5.0, 0.0, 25.0, 50.0, 99.0, 100.0, 1e9]), quantiles).tolist() == pytest.approx(
        [0.0, 0.0, 0.25, 0.5, 0.99, 1.0, 1.0])


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """Features as a classifier's: around a few class directions."""
    return centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.2, (n, centres.shape[1]))


def test_calibrate_knn_keeps_the_bank_out_of_the_threshold_and_ships_what_it_scored_with(tmp_path):
    rng = np.random.default_rng(0)
    centres = {"head": rng.normal(0, 1, (5, 16)), "stage1.module1:std": rng.normal(0, 1, (3, 8))}
    train = {view: torch.from_numpy(clustered(rng, c, 600)) for view, c in centres.items()}
    # the test set: 100 familiar in both views, 50 unfamiliar in the head only, 50 in the other view only
    familiar = {view: clustered(rng, c, 200) for view, c in centres.items()}
    familiar["head"][100:150] = rng.normal(0, 1, (50, 16))
    familiar["stage1.module1:std"][150:] = rng.normal(0, 1, (50, 8))
    test = {view: torch.from_numpy(f) for view, f in familiar.items()}
    result, payload = calibrate_knn(train, data="synthetic", bank_file="x.ood.safetensors", test_features=test,
                                    k=3, bank_size=200, seed=1)
    assert (result.method, result.k, result.bank, result.bank_images, result.temperature, result.views) == (
        "knn", 3, "x.ood.safetensors", 200, None, ("head", "stage1.module1:std"))
    assert result.train_images == 400 and result.test_images == 200 and result.train_tpr >= 0.95
    (tmp_path / "x.ood.safetensors").write_bytes(payload)
    bank = read_bank(tmp_path / "x.ood.safetensors", result)
    assert bank["head/features"].shape == (200, 16) and bank["stage1.module1:std/features"].shape == (200, 8)
    assert torch.allclose(bank["head/features"].norm(dim=1), torch.ones(200, dtype=torch.float64), atol=1e-3)
    # each view's bank is the same 200 training images; its quantiles are the 400 others' knn scores
    order = torch.randperm(600, generator=torch.Generator().manual_seed(1))
    for view in centres:
        others = knn_score(train[view][order[200:]], bank[f"{view}/features"], 3)
        assert bank[f"{view}/quantiles"][[0, -1]].tolist() == pytest.approx([float(others.min()), float(others.max())], abs=1e-6)
    # the score is the smaller percentile; the threshold keeps 95% of the 400 held-out images
    scorer = OODScorer(OODCalibration.from_manifest(json.loads(json.dumps(result.manifest()))), bank)
    held_out = scorer.scores(torch.zeros(400, 10), {v: f[order[200:]] for v, f in train.items()})
    by_hand = torch.minimum(*[percentile(knn_score(train[v][order[200:]], bank[f"{v}/features"], 3),
                                         bank[f"{v}/quantiles"]) for v in centres])
    assert torch.allclose(held_out, by_hand) and 0 <= float(held_out.min()) and float(held_out.max()) <= 1
    assert result.train_tpr == round(kept_fraction(held_out, result.threshold), 4)
    # unfamiliar in EITHER view is flagged; familiar in both is not
    flagged = [result.flagged(float(v)) for v in scorer.scores(torch.zeros(200, 10), test)]
    assert sum(flagged[100:150]) > 40 and sum(flagged[150:]) > 40 and sum(flagged[:100]) < 20
    assert result.test_fraction_flagged == pytest.approx(sum(flagged) / 200, abs=1e-4)


def test_a_bank_that_is_not_the_calibrations_is_refused(tmp_path):
    train = {"head": torch.from_numpy(np.random.default_rng(0).normal(0, 1, (50, 4)))}
    result, payload = calibrate_knn(train, data="d", bank_file="b.safetensors", k=2, bank_size=10)
    with pytest.raises(OODError, match="cannot read the OOD bank"):
        read_bank(tmp_path / "b.safetensors", result)
    (tmp_path / "b.safetensors").write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    with pytest.raises(OODError, match="corrupt or not this calibration's"):
        read_bank(tmp_path / "b.safetensors", result)
    with pytest.raises(OODError, match="needs its bank"):
        OODScorer(result)
    # a bank of another calibration's views
    other = dataclasses.replace(result, views=("head", "stage1.module1:std"))
    with pytest.raises(OODError, match="lacks 'stage1.module1:std/features'"):
        OODScorer(other, read_bank(_write(tmp_path / "c.safetensors", payload), result))
    with pytest.raises(OODError, match="bank size < training images"):
        calibrate_knn(train, data="d", bank_file="b", k=2, bank_size=50)
    with pytest.raises(OODError, match="knn calibration needs k >= 1"):
        OODCalibration.from_manifest({**result.manifest(), "bank_sha256": None})
    with pytest.raises(OODError, match="unknown OOD view 'stage1.module1:max'"):
        calibrate_knn({"stage1.module1:max": train["head"]}, data="d", bank_file="b", k=2, bank_size=10)
    with pytest.raises(OODError, match="views are for knn"):
        OODCalibration.from_manifest({**result.manifest(), "views": []})


def _write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def test_view_features_are_the_statistics_of_each_modules_output():
    explainer = Explainer.load("attention56_cifar")
    x = torch.stack([explainer.preprocess(noise(seed, 32)) for seed in range(3)])
    out = explainer.model.forward_intermediates(x)
    found = view_features(out, ["head", "stage2.module1:mean", "stage1.module1:std"])
    h = (1 + out["stage1.module1"].mask) * out["stage1.module1"].trunk
    assert torch.allclose(found["stage1.module1:std"], h.flatten(2).std(dim=2))
    assert torch.allclose(found["stage2.module1:mean"],
                          ((1 + out["stage2.module1"].mask) * out["stage2.module1"].trunk).mean((2, 3)))
    assert torch.equal(found["head"], out.features)
    with pytest.raises(KeyError, match="no attention module named 'stage9.module1'"):
        view_features(out, ["stage9.module1:std"])


def test_a_calibration_that_cannot_be_used_is_refused():
    good = calibrate(torch.zeros(20, 10), data="zeros").manifest()
    with pytest.raises(OODError, match="unknown OOD method 'mahalanobis'"):
        OODCalibration.from_manifest({**good, "method": "mahalanobis"})
    with pytest.raises(OODError, match="threshold"):
        OODCalibration.from_manifest({**good, "threshold": None})
    with pytest.raises(OODError, match="unreadable"):
        OODCalibration.from_manifest({k: v for k, v in good.items() if k != "threshold"})


# ---- the shipped model

@pytest.mark.parametrize("arch", ["attention56_cifar", "attention92_cifar"])
def test_the_default_weights_ship_a_calibration_made_on_their_training_data(arch):
    weights = get_weights(arch, "DEFAULT")
    assert weights.ood is not None, f"{weights.name} has no ood entry: run ranlens calibrate-ood"
    cal = OODCalibration.from_manifest(weights.ood)
    assert cal.method == "knn" and cal.k == 5 and cal.bank_images == 5000 and cal.tpr_target == 0.95
    assert cal.bank == f"{weights.name}.ood.safetensors" and cal.views == ("head", "stage1.module1:std")
    bank = read_bank(weights.companion(cal.bank), cal)
    assert bank["head/features"].shape == (5000, 256) and bank["stage1.module1:std/features"].shape == (5000, 64)
    assert bank["head/quantiles"].shape == bank["stage1.module1:std/quantiles"].shape == (1001,)
    # the threshold is chosen on the training images outside the bank
    assert 0.95 <= cal.train_tpr < 0.96 and cal.train_images == 45_000 and cal.test_images == 10_000
    # held-out images score a little lower than the ones trained on, so somewhat more than 5% fall out
    assert 0.03 < cal.test_fraction_flagged < 0.3
    assert "CIFAR-10" in cal.data


@pytest.fixture(scope="module", params=["attention56_cifar", "attention92_cifar"])
def explainer(request):
    return Explainer.load(request.param)


def test_noise_is_flagged_and_cifar_test_images_mostly_are_not(explainer):
    for seed in NOISE_SEEDS:
        result = explainer.explain(noise(seed))
        assert result.out_of_distribution is True, (seed, result.ood_score, result.ood_threshold)
    fixtures = sorted(CIFAR_FIXTURES.glob("*/*.jpg"))
    assert len(fixtures) == 30
    flagged = [p for p in fixtures if explainer.explain(decode_image(p.read_bytes(), 10**6)).out_of_distribution]
    # about 6% of the full test split is flagged; 20% leaves room for 30 images' luck
    assert len(flagged) <= 0.2 * len(fixtures), flagged


def test_noise_and_flat_colours_at_the_input_size_are_flagged(explainer):
    """What the energy score missed (a confident 'frog'), and the classifier's features alone missed half
    of for the distilled Attention-92: the texture of the first module's output tells noise and flat
    colours from a photo. Noise that the reduction to 32 pixels smooths part way (48 to 128 pixels) was
    flagged 5 to 75% of the time by the classifier's features alone; now nearly always (here all 20 for
    Attention-56 and 19 for Attention-92, whose 20th scores just above the line)."""
    results = [explainer.explain(noise(seed, 32)) for seed in NOISE_SEEDS]
    flagged = [r.out_of_distribution for r in results]
    # the score is the smaller of the two views' percentiles; the texture view finds every noise unfamiliar
    assert all(r.ood_score == min(r.ood_views.values()) and r.ood_views["stage1.module1:std"] < r.ood_threshold
               for r in results), [r.ood_views for r in results]
    flat = [explainer.explain(Image.new("RGB", (size, size), colour)).out_of_distribution
            for colour in ((0, 0, 0), (255, 255, 255), (200, 30, 30), (128, 128, 128)) for size in (32, 48, 300)]
    assert all(flagged) and all(flat), (flagged, flat)
    shrunk = [explainer.explain(noise(seed, side)).out_of_distribution for seed in NOISE_SEEDS
              for side in (48, 64, 96, 128)]
    assert sum(shrunk) >= 0.9 * len(shrunk), shrunk


def test_the_energy_score_is_still_there_for_weights_calibrated_with_it(tmp_path):
    """Manifests calibrated with the energy score (earlier checkpoints) keep their meaning."""
    shipped = get_weights("attention56_cifar", "DEFAULT")
    (tmp_path / shipped.file).symlink_to(shipped.path)
    entry = {**calibrate(torch.randn(100, 10), data="d").manifest(), "threshold": 3.0}
    copy = dataclasses.replace(shipped, name="energy", ood=entry, directory=tmp_path)
    loaded = Explainer.load(weights=str(copy.write_manifest()))
    result = loaded.explain(noise(0, 32))
    assert result.ood.method == "energy" and result.ood_threshold == 3.0
    z = loaded.model(loaded.preprocess(noise(0, 32)).unsqueeze(0))
    assert result.ood_score == pytest.approx(float(energy_score(z[0])), abs=1e-4)


def test_uncalibrated_weights_still_predict_with_no_verdict(tmp_path):
    manifest = uncalibrated_manifest(tmp_path)
    assert "ood" not in json.loads(manifest.read_text())
    weights = Weights.from_manifest(manifest)
    assert weights.ood is None
    loaded = Explainer.load(weights=str(manifest))
    result = loaded.explain(noise(0))
    assert result.out_of_distribution is None and result.ood_threshold is None
    assert math.isfinite(result.ood_score) and result.predictions[0].label
    assert loaded.metadata()["ood"] is None
    broken = dataclasses.replace(weights, ood={"method": "energy"})
    with pytest.raises(WeightsError, match="uncalibrated: unreadable OOD calibration"):
        Explainer(loaded.model, broken)


# ---- the API

@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(torch_threads=THREADS))) as c:
        yield c


def _post(client, route: str, data: bytes, name: str, ctype: str):
    response = client.post(route, files={"file": (name, data, ctype)})
    assert response.status_code == 200, response.text
    return response.json()


def test_api_reports_the_score_threshold_and_verdict(client):
    calibration = get_weights("attention56_cifar", "DEFAULT").ood
    models = client.get("/api/v1/models").json()["models"]
    assert models[0]["ood"] == calibration
    assert client.get("/api/v1/models/attention56_cifar").json()["ood"] == calibration
    cat = (PHOTOS / "cifar10-cat.jpg").read_bytes()
    # ablate: the intact network's verdict, beside what turning its masks off does
    for route in ("/api/v1/predict", "/api/v1/explain", "/api/v1/ablate"):
        flagged = _post(client, route, png(noise(1)), "noise.png", "image/png")
        assert flagged["out_of_distribution"] is True and flagged["ood_threshold"] == calibration["threshold"]
        assert flagged["ood_score"] < calibration["threshold"]
        # each view's percentile; the score is the smallest, and the texture view is what finds noise unfamiliar
        views = flagged["ood_views"]
        assert list(views) == calibration["views"] and min(views.values()) == flagged["ood_score"]
        assert views["stage1.module1:std"] < calibration["threshold"]
        kept = _post(client, route, cat, "cat.jpg", "image/jpeg")
        assert kept["out_of_distribution"] is False and kept["ood_score"] >= calibration["threshold"]
        assert min(kept["ood_views"].values()) == kept["ood_score"]


def test_api_says_when_the_weights_have_no_calibration(tmp_path):
    settings = Settings(weights=str(uncalibrated_manifest(tmp_path)), torch_threads=THREADS)
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/models").json()["models"][0]["ood"] is None
        body = _post(client, "/api/v1/predict", png(noise(0)), "noise.png", "image/png")
        # null, not left out: "no calibration" is an answer
        assert body["out_of_distribution"] is None and body["ood_threshold"] is None and body["ood_views"] is None
        assert isinstance(body["ood_score"], float)
        assert "overlay" not in body["attention"][0] and "mask" not in body["attention"][0]
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "calibrate-ood" in schema["PredictResponse"]["properties"]["out_of_distribution"]["description"]


# ---- the command line

def ranlens(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ranlens", *args], capture_output=True, text=True, timeout=300)


def test_calibrate_ood_writes_only_the_ood_entry_and_explain_prints_the_verdict(tmp_path):
    manifest = uncalibrated_manifest(tmp_path)
    before = json.loads(manifest.read_text())
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):  # the committed fixtures stand in for both splits
        (data / split).symlink_to(CIFAR_FIXTURES, target_is_directory=True)
    result = ranlens("calibrate-ood", "--weights", str(manifest), "--data", str(data), "--dataset", "fixtures",
                     "--method", "energy", "--threads", str(THREADS), "--examples", str(PHOTOS / "cifar10-cat.jpg"))
    assert result.returncode == 0, result.stderr
    after = json.loads(manifest.read_text())
    assert {k: v for k, v in after.items() if k != "ood"} == before
    cal = OODCalibration.from_manifest(after["ood"])
    assert cal.method == "energy" and cal.data == "fixtures" and cal.train_images == 30 and cal.test_images == 30
    assert not (tmp_path / "uncalibrated.ood.safetensors").exists()
    # 95% of 30 is 28.5: at most one image may fall below, and the test split is the same images
    assert cal.train_tpr >= 0.95 and cal.test_fraction_flagged == pytest.approx(1 - cal.train_tpr, abs=1e-4)
    assert f"threshold {cal.threshold:.4f} keeps {100 * cal.train_tpr:.2f}% of 30 training images" in result.stdout
    assert f"{PHOTOS / 'cifar10-cat.jpg'}: score " in result.stdout

    out = tmp_path / "out"
    explained = ranlens("explain", str(PHOTOS / "cifar10-cat.jpg"), "--out", str(out), "--threads", str(THREADS))
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    verdict = lines[lines.index(next(x for x in lines if x.startswith(str(PHOTOS / "cifar10-cat.jpg")))) + 1]
    entry = json.loads((out / "manifest.json").read_text())["images"][str(PHOTOS / "cifar10-cat.jpg")]
    assert entry["out_of_distribution"] is False and verdict.startswith("  in distribution: score ")
    views = entry["ood_views"]
    assert list(views) == ["head", "stage1.module1:std"] and entry["ood_score"] == min(views.values())
    assert f"(head {views['head']:.4f}, stage1.module1:std {views['stage1.module1:std']:.4f}) >= threshold" in verdict
    assert entry["ood_threshold"] == get_weights("attention56_cifar", "DEFAULT").ood["threshold"]


def test_calibrate_ood_knn_writes_the_bank_beside_the_manifest_and_the_app_uses_it(tmp_path):
    manifest = uncalibrated_manifest(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / split).symlink_to(CIFAR_FIXTURES, target_is_directory=True)
    common = ["calibrate-ood", "--weights", str(manifest), "--data", str(data), "--dataset", "fixtures",
              "--bank-size", "10", "--k", "2", "--threads", str(THREADS)]
    dry = ranlens(*common, "--dry-run", "--examples", str(PHOTOS / "cifar10-cat.jpg"))
    assert dry.returncode == 0, dry.stderr
    assert f"{PHOTOS / 'cifar10-cat.jpg'}: score " in dry.stdout
    assert "ood" not in json.loads(manifest.read_text()) and not (tmp_path / "uncalibrated.ood.safetensors").exists()

    result = ranlens(*common)
    assert result.returncode == 0, result.stderr
    cal = OODCalibration.from_manifest(json.loads(manifest.read_text())["ood"])
    assert (cal.method, cal.k, cal.bank_images, cal.train_images, cal.test_images) == ("knn", 2, 10, 20, 30)
    assert f"threshold {cal.threshold:.4f} keeps {100 * cal.train_tpr:.2f}% of 20 training images" in result.stdout
    bank = tmp_path / "uncalibrated.ood.safetensors"
    assert cal.bank == bank.name and cal.views == ("head", "stage1.module1:std")
    assert read_bank(bank, cal)["head/features"].shape == (10, 256)
    explainer = Explainer.load(weights=str(manifest))
    assert explainer.explain(noise(0, 32)).ood_threshold == cal.threshold
    # a bank that went missing is a clear error when the weights load, not a wrong verdict later
    bank.unlink()
    with pytest.raises(WeightsError, match="cannot read the OOD bank"):
        Explainer.load(weights=str(manifest))
    refused = ranlens(*common[:-2], "--bank-size", "30")  # refused before any scoring: the files are counted
    assert refused.returncode == 1 and (f"--bank-size 30 leaves no training images to calibrate on: {data / 'train'} "
                                        f"has 30") in refused.stderr.strip().splitlines()[-1], refused.stderr
    for views, message in (("stage9.module1:std", "attention56_cifar has no module 'stage9.module1'"),
                           ("head,stage1.module1:max", "unknown OOD view 'stage1.module1:max'")):
        refused = ranlens(*common, "--views", views)
        assert refused.returncode == 1 and message in refused.stderr.strip().splitlines()[-1], refused.stderr


def test_calibrate_ood_stopped_while_judging_the_examples_leaves_the_weights_as_they_were(tmp_path, monkeypatch):
    """The new bank is moved in only after the examples are judged: Ctrl-C while they run leaves the old
    manifest and bank (which agree, so the weights still load) and no stray files."""
    from ranlens import cli

    shipped = get_weights("attention56_cifar", "DEFAULT")
    for name in (shipped.file, shipped.ood["bank"]):
        (tmp_path / name).write_bytes((shipped.directory / name).read_bytes())
    manifest = dataclasses.replace(shipped, directory=tmp_path).write_manifest()
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    data = tmp_path.parent / f"{tmp_path.name}-data"
    data.mkdir()
    for split in ("train", "test"):
        (data / split).symlink_to(CIFAR_FIXTURES, target_is_directory=True)

    def interrupted(self, image):
        raise KeyboardInterrupt

    monkeypatch.setattr(Explainer, "explain", interrupted)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["calibrate-ood", "--weights", str(manifest), "--data", str(data), "--bank-size", "10", "--k", "2",
                  "--threads", str(THREADS), "--examples", str(PHOTOS / "cifar10-cat.jpg")])
    assert stopped.value.code == 130
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    monkeypatch.undo()
    assert Explainer.load(weights=str(manifest)).ood.bank == shipped.ood["bank"]


def test_a_calibration_whose_views_name_modules_the_network_lacks_is_refused_at_load(tmp_path):
    shipped = get_weights("attention56_cifar", "DEFAULT")
    for name in (shipped.file, shipped.ood["bank"]):
        (tmp_path / name).symlink_to(shipped.directory / name)
    entry = {**shipped.ood, "views": ["head", "stage3.module2:std"]}  # Attention-92's, not Attention-56's
    manifest = dataclasses.replace(shipped, name="elsewhere", ood=entry, directory=tmp_path).write_manifest()
    with pytest.raises(WeightsError, match=r"name modules this network lacks"):
        Explainer.load(weights=str(manifest))


def test_a_bank_made_for_another_network_is_refused_at_load(tmp_path):
    """Feature vectors of another width (another network's) would fail every request with a matmul
    error; the weights refuse to load instead, naming the view."""
    shipped = get_weights("attention56_cifar", "DEFAULT")
    (tmp_path / shipped.file).symlink_to(shipped.path)
    rng = np.random.default_rng(0)
    narrow = {view: torch.from_numpy(rng.normal(0, 1, (40, 4))) for view in ("head", "stage1.module1:std")}
    result, payload = calibrate_knn(narrow, data="d", bank_file="narrow.ood.safetensors", k=2, bank_size=10)
    _write(tmp_path / "narrow.ood.safetensors", payload)
    manifest = dataclasses.replace(shipped, name="narrow", ood=result.manifest(), directory=tmp_path).write_manifest()
    with pytest.raises(WeightsError, match=r"bank's 'head' features have 4 values; this network's have 256"):
        Explainer.load(weights=str(manifest))


def test_calibrations_made_before_views_still_score_by_the_head_distance():
    """The parents (v7) were calibrated on the classifier's features alone: their score is that distance."""
    explainer = Explainer.load("attention56_cifar", "attention56_cifar.v7")
    assert explainer.ood.views is None and "views" not in explainer.weights.ood
    assert explainer.explain(noise(0, 32)).ood_views is None
    bank = read_bank(explainer.weights.companion(explainer.ood.bank), explainer.ood)["features"]
    for image in (noise(0, 32), decode_image((PHOTOS / "cifar10-cat.jpg").read_bytes(), 10**6)):
        result = explainer.explain(image)
        features = explainer.infer(explainer.preprocess(image).unsqueeze(0), features=True)["features:head"]
        assert result.ood_score == pytest.approx(float(knn_score(torch.from_numpy(features), bank, 5)[0]), abs=1e-6)
        assert result.out_of_distribution == (result.ood_score < explainer.ood.threshold)
