"""Checkpoints: safetensors round trip, hash and architecture checks, the shipped weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image

from ranlens.model import Weights, WeightsError, get_model, list_weights
from ranlens.model.weights import (
    CIFAR10_CLASSES, DEFAULT_WEIGHTS, get_weights, resolve_weights, save_checkpoint, sha256_of,
)


def _weights_for(model, tmp_path, name="tiny.v0") -> Weights:
    path = tmp_path / f"{name}.safetensors"
    digest = save_checkpoint(model, path, model.config.name)
    return Weights(name=name, arch=model.config.name, file=path.name, sha256=digest, classes=CIFAR10_CLASSES,
                   input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), directory=tmp_path)


def test_round_trip_through_manifest(tmp_path):
    torch.manual_seed(1)
    model = get_model("attention56_cifar", num_classes=10).eval()
    weights = _weights_for(model, tmp_path)
    manifest = weights.write_manifest()
    reloaded = Weights.from_manifest(manifest)
    assert reloaded == weights
    loaded = get_model("attention56_cifar", weights=reloaded)
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert [w.name for w in list_weights(directory=tmp_path)] == ["tiny.v0"]


def test_corrupt_file_fails_the_hash_check(tmp_path):
    weights = _weights_for(get_model("attention56_cifar", num_classes=10), tmp_path)
    data = bytearray(weights.path.read_bytes())
    data[-1] ^= 0xFF
    weights.path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt"):
        get_model("attention56_cifar", weights=weights)


def test_missing_file_without_url_is_a_clear_error(tmp_path):
    weights = _weights_for(get_model("attention56_cifar", num_classes=10), tmp_path)
    weights.path.unlink()
    with pytest.raises(WeightsError, match="missing"):
        get_model("attention56_cifar", weights=weights)


def test_wrong_architecture_is_refused(tmp_path):
    weights = _weights_for(get_model("attention56_cifar", num_classes=10), tmp_path)
    with pytest.raises(WeightsError, match="are for attention56_cifar"):
        get_model("attention92_cifar", weights=weights)
    # a manifest that lies about the architecture is caught by the checkpoint's own metadata
    lying = dataclasses.replace(weights, arch="attention92_cifar")
    with pytest.raises(WeightsError, match="holds architecture 'attention56_cifar'"):
        get_model("attention92_cifar", weights=lying)


def test_mismatched_tensors_are_named(tmp_path):
    model92 = get_model("attention92_cifar", num_classes=10)
    path = tmp_path / "x.safetensors"
    digest = save_checkpoint(model92, path, "attention56_cifar")  # wrong label on purpose
    weights = Weights(name="x", arch="attention56_cifar", file=path.name, sha256=digest, classes=CIFAR10_CLASSES,
                      input_size=32, mean=(0, 0, 0), std=(1, 1, 1), directory=tmp_path)
    with pytest.raises(WeightsError, match="unexpected"):
        get_model("attention56_cifar", weights=weights)


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a checkpoint at all")
    weights = Weights(name="junk", arch="attention56_cifar", file=path.name, sha256=sha256_of(path),
                      classes=CIFAR10_CLASSES, input_size=32, mean=(0, 0, 0), std=(1, 1, 1), directory=tmp_path)
    with pytest.raises(WeightsError, match="cannot read"):
        get_model("attention56_cifar", weights=weights)


@pytest.fixture(scope="module")
def shipped():
    weights = get_weights("attention56_cifar", "DEFAULT")
    assert weights.name == DEFAULT_WEIGHTS["attention56_cifar"]
    assert weights.name in {w.name for w in list_weights("attention56_cifar")}  # one of the shipped manifests
    return weights, get_model("attention56_cifar", weights=weights)


def test_shipped_manifest_is_complete(shipped):
    weights, _ = shipped
    assert weights.classes == CIFAR10_CLASSES
    assert weights.path.stat().st_size < 10 * 1024 * 1024
    assert sha256_of(weights.path) == weights.sha256
    for key in ("epochs", "lr", "train_wall_hours", "train_img_per_s", "command"):
        assert key in weights.recipe
    assert 0.5 < weights.metrics["top1"] <= 1 and weights.metrics["images"] == 10000
    assert weights.input_size == 32 and weights.mean == (0.4914, 0.4822, 0.4465)
    assert weights.std == (0.247, 0.2435, 0.2616)
    # serialisable as is, and exactly what the shipped manifest file holds
    on_disk = json.loads(weights.path.with_suffix(".json").read_text())
    assert json.loads(json.dumps(weights.manifest())) == on_disk and on_disk["name"] == weights.name


def test_shipped_weights_classify_cifar_test_images(shipped, cifar_test_images):
    weights, model = shipped
    preprocess = weights.transforms()
    paths, labels = [], []
    for label, files in sorted(cifar_test_images.items()):
        paths += files
        labels += [weights.classes.index(label)] * len(files)
    batch = torch.stack([preprocess(Image.open(p)) for p in paths])
    with torch.no_grad():
        predicted = model(batch).argmax(1).tolist()
    correct = sum(p == t for p, t in zip(predicted, labels))
    # 30 images, three per class: the shipped model must get most of them right
    assert correct / len(labels) >= 0.7, f"{correct}/{len(labels)} correct"


def test_versions_sort_naturally_and_a_broken_manifest_hides_nothing(tmp_path):
    model = get_model("attention56_cifar", num_classes=10)
    for name in ("tiny.v9", "tiny.v10", "tiny.v2"):
        _weights_for(model, tmp_path, name).write_manifest()
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "incomplete.json").write_text(json.dumps({"name": "x"}))
    with pytest.warns(UserWarning, match="skipping unreadable weights manifest") as caught:
        names = [w.name for w in list_weights(directory=tmp_path)]
    assert names == ["tiny.v2", "tiny.v9", "tiny.v10"]
    assert len(caught) == 2


def test_default_is_the_pinned_checkpoint_not_the_last_file(tmp_path, monkeypatch):
    # a newer-looking manifest beside the pinned one must not become DEFAULT by its name
    import ranlens.model.weights as weights_module

    model = get_model("attention56_cifar", num_classes=10)
    for name in ("attention56_cifar.v1", "attention56_cifar.v99"):
        _weights_for(model, tmp_path, name).write_manifest()
    monkeypatch.setattr(weights_module, "DEFAULT_WEIGHTS", {"attention56_cifar": "attention56_cifar.v1"})
    assert get_weights("attention56_cifar", "DEFAULT", directory=tmp_path).name == "attention56_cifar.v1"
    with pytest.raises(WeightsError, match="no weights are shipped for attention92_cifar"):
        get_weights("attention92_cifar", "DEFAULT", directory=tmp_path)


def test_resolve_weights_by_manifest_by_name_of_an_architecture_or_of_any(tmp_path):
    shipped = {w.name: w for w in list_weights()}
    a92 = DEFAULT_WEIGHTS["attention92_cifar"]
    # no architecture: any shipped name, whatever its architecture
    assert resolve_weights(None, a92) == shipped[a92]
    assert resolve_weights("attention92_cifar", "DEFAULT") == shipped[a92]
    # a manifest path, wherever it is and whatever architecture is asked for
    tiny = _weights_for(get_model("attention56_cifar", num_classes=10), tmp_path)
    manifest = tiny.write_manifest()
    assert resolve_weights("attention92_cifar", str(manifest)).name == "tiny.v0"
    with pytest.raises(WeightsError, match=rf"unknown weights 'nope.v1': name shipped weights \(.*{a92}"):
        resolve_weights(None, "nope.v1")
    with pytest.raises(WeightsError, match="unknown weights 'nope.v1' for attention56_cifar"):
        resolve_weights("attention56_cifar", "nope.v1")
    with pytest.raises(WeightsError, match="weights manifest .*missing.json not found"):
        resolve_weights(None, str(tmp_path / "missing.json"))


def test_a_manifest_write_stopped_midway_leaves_the_old_manifest(tmp_path, monkeypatch):
    """A server lists manifests while ``evaluate --write-metrics``, ``calibrate-ood`` or ``export`` write
    one: written in place, a stop (or a read) midway met half a JSON file, and the weights went missing."""
    from pathlib import Path

    tiny = Weights(name="tiny.v0", arch="attention56_cifar", file="tiny.v0.safetensors", sha256="0" * 64,
                   classes=("a", "b"), input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), directory=tmp_path)
    manifest = tiny.write_manifest()
    before = manifest.read_text()
    real = Path.write_text

    def stopped_halfway(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", stopped_halfway)
    with pytest.raises(KeyboardInterrupt):
        dataclasses.replace(tiny, metrics={"top1": 0.5}).write_manifest()
    monkeypatch.undo()
    assert manifest.read_text() == before and Weights.from_manifest(manifest) == tiny
    assert [p.name for p in tmp_path.iterdir()] == [manifest.name]  # no partial file left beside it
    assert Weights.from_manifest(dataclasses.replace(tiny, metrics={"top1": 0.5}).write_manifest()).metrics == {
        "top1": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == [manifest.name]
