"""Data loading, augmentation, the schedule, and the resumable training loop on a tiny folder."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ranlens.model import get_model
from ranlens.model.data import Split, augment, cutout, load_split, normalize, trivial_augment
from ranlens.model.train import (CIFAR_MEAN, CIFAR_STD, TrainConfig, eval_batch_size, evaluate_split, lr_at,
                                 make_optimizer, train, train_step)


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("ranlens.model.data.CACHE_DIR", tmp_path / "cache")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for label, name in enumerate(("cat", "dog")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                base = np.full((32, 32, 3), 40 + 150 * label, dtype=np.uint8)
                noise = rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(base + noise).save(folder / f"{i}.png")
    # one odd-sized image: loaded through the same resize + centre crop as inference
    Image.new("RGB", (50, 40), (200, 10, 10)).save(tmp_path / "data" / "train" / "dog" / "odd.jpg")
    return tmp_path / "data"


def test_folder_split_and_cache(tiny_folder):
    from ranlens.model import data

    split = load_split(tiny_folder, "train")
    assert split.images.shape == (25, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.classes == ("cat", "dog") and split.labels.tolist().count(1) == 13
    cached = list(data.CACHE_DIR.glob("train-32-*.npz"))  # tiny_folder's own cache folder
    assert len(cached) == 1, sorted(data.CACHE_DIR.iterdir())
    # an image rewritten in place (its folder's times unchanged): a new decode would see white, the
    # cache still holds what was decoded first
    first = split.images[split.labels == 0][0]
    Image.new("RGB", (32, 32), (255, 255, 255)).save(tiny_folder / "train" / "cat" / "0.png")
    again = load_split(tiny_folder, "train")  # from the .npz cache
    assert torch.equal(again.images, split.images) and again.classes == split.classes
    assert torch.equal(again.images[again.labels == 0][0], first) and int(first.min()) < 255
    assert list(data.CACHE_DIR.glob("train-32-*.npz")) == cached
    with pytest.raises(ValueError):
        load_split(tiny_folder, "validation")


def test_folder_images_are_decoded_as_uploads(tmp_path, monkeypatch):
    """Transparency on white and EXIF orientation applied, as the app decodes what it is shown."""
    monkeypatch.setattr("ranlens.model.data.CACHE_DIR", tmp_path / "cache")
    folder = tmp_path / "data" / "test" / "things"
    folder.mkdir(parents=True)
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(folder / "clear.png")
    sideways = Image.new("RGB", (32, 16), (0, 0, 255))
    sideways.paste((255, 0, 0), (0, 0, 16, 16))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view: red ends up on top
    sideways.save(folder / "rotated.png", exif=exif)
    split = load_split(tmp_path / "data", "test")
    clear, rotated = split.images
    assert int(clear.min()) == 255
    assert rotated[:, 1, 16].tolist() == [255, 0, 0] and rotated[:, 30, 16].tolist() == [0, 0, 255]


def test_augment_keeps_shape_and_content():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 32, 32)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    again = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded, so a resumed run sees the same batches


def test_augment_is_a_padded_crop_and_flip_per_image():
    torch.manual_seed(1)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(3))
    # the same draws, applied one image at a time as the definition says
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 9, (16,), generator=g)
    dx = torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(16):
        crop = padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop), i
    assert flip.any() and not flip.all() and (dy != 4).any()  # the draws did move and flip images


def test_trivial_augment_is_torchvisions_policy_seeded_per_image():
    from torchvision.transforms import TrivialAugmentWide

    torch.manual_seed(4)
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    before = torch.get_rng_state()
    out = trivial_augment(images, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is left alone
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, trivial_augment(images, torch.Generator().manual_seed(7)))  # repeatable
    assert not torch.equal(out, trivial_augment(images, torch.Generator().manual_seed(8)))
    # image i is torchvision's TrivialAugmentWide under the i-th seed drawn from the generator
    seeds = torch.randint(0, 2**62, (24,), generator=torch.Generator().manual_seed(7)).tolist()
    for i in (0, 11, 23):
        torch.manual_seed(seeds[i])
        assert torch.equal(out[i], TrivialAugmentWide()(images[i]))
    changed = (out != images).flatten(1).any(1)
    assert changed.sum() >= 18  # one of its 14 operations is "identity", and some strengths change little


def test_stream_transform_adds_trivial_augment_in_the_workers():
    from torchvision.transforms import TrivialAugmentWide

    from ranlens.model.stream import train_transform

    assert not any(isinstance(t, TrivialAugmentWide) for t in train_transform(48).transforms)
    with_ta = train_transform(48, trivial_augment=True)
    assert any(isinstance(t, TrivialAugmentWide) for t in with_ta.transforms)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 70, 3), dtype=np.uint8))
    torch.manual_seed(0)  # a worker's random state, seeded by the loader
    first = with_ta(picture)
    torch.manual_seed(0)
    assert first.shape == (3, 48, 48) and first.dtype == torch.uint8 and torch.equal(first, with_ta(picture))


def test_cutout_zeroes_one_clipped_square_per_image():
    images = torch.ones(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = cutout(images, 8, torch.Generator().manual_seed(0))
    assert torch.equal(images, torch.ones_like(images))  # the input is left alone
    assert out.is_contiguous(memory_format=torch.channels_last)
    holes = out[:, 0] == 0
    assert torch.equal(holes, (out == 0).all(1))  # the same pixels in every channel
    area = holes.sum((1, 2))
    assert area.max() == 64 and area.min() > 0 and (area < 64).any()  # whole squares and border-clipped ones
    rows, cols = holes.any(2).sum(1), holes.any(1).sum(1)
    assert torch.equal(rows * cols, area)  # each hole is one rectangle
    assert cutout(images, 0, torch.Generator()) is images
    with pytest.raises(ValueError, match="cutout size"):
        cutout(images, -1, torch.Generator())


def test_evaluation_batches_are_small_on_a_cpu_and_do_not_change_the_logits():
    assert eval_batch_size("cpu", 32) == 64 and eval_batch_size("cpu", 224) == 1
    assert eval_batch_size("cuda", 32) == 500
    torch.manual_seed(0)
    model = get_model("attention56_cifar", num_classes=3)
    images = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8)  # 64 + a partial batch of 6
    split = Split(images, torch.arange(70) % 3, ("a", "b", "c"))
    logits, labels = evaluate_split(model, split, CIFAR_MEAN, CIFAR_STD, show=False)
    one_batch, _ = evaluate_split(model, split, CIFAR_MEAN, CIFAR_STD, batch_size=70, show=False)
    assert logits.shape == (70, 3) and torch.equal(labels, split.labels)
    torch.testing.assert_close(logits, one_batch, rtol=1e-4, atol=1e-4)


def test_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(lr=0.2, warmup=0.1)
    values = [lr_at(s, 1000, cfg) for s in range(1000)]
    assert values[0] == pytest.approx(0.02) and max(values) == pytest.approx(0.2, rel=1e-3)
    assert values.index(max(values)) == 100 and values[-1] < 1e-5


def test_stopped_run_resumes_where_it_stopped_to_the_same_weights(tiny_folder, tmp_path):
    from safetensors.torch import load_file

    common = dict(data=str(tiny_folder), epochs=2, batch_size=12, cutout=8, threads=1)
    straight = train(TrainConfig(out=str(tmp_path / "straight"), **common))
    assert len(straight) == 2 and 0 <= straight[-1]["test_acc"] <= 1
    run = tmp_path / "stopped"
    first = train(TrainConfig(out=str(run), stop_after=1, **common))
    assert len(first) == 1 and torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert {"last.pt", "epoch001.safetensors", "metrics.json", "curves.png", "config.json"} <= {
        p.name for p in run.iterdir()}
    epoch1 = (run / "epoch001.safetensors").stat().st_mtime_ns
    config = (run / "config.json").read_text()
    assert json.loads(config)["stop_after"] == 1

    resumed = train(TrainConfig(out=str(run), **common))
    # a resume, not a restart: epoch 1 is not trained again (its record, timings included, and its
    # checkpoint are the first invocation's), and the run's config.json is the one it started with
    assert resumed[0] == first[0] and json.loads((run / "metrics.json").read_text()) == resumed
    assert [h["epoch"] for h in resumed] == [1, 2]
    assert (run / "epoch001.safetensors").stat().st_mtime_ns == epoch1
    assert (run / "config.json").read_text() == config
    # and it continues from the saved weights and optimizer momentum: the same weights as one go
    a = load_file(str(tmp_path / "straight" / "epoch002.safetensors"))
    b = load_file(str(run / "epoch002.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loader", [{}, {"loader": "stream", "workers": 0}], ids=["memory", "stream-no-workers"])
def test_a_run_stopped_inside_an_epoch_resumes_from_its_last_save(tiny_folder, tmp_path, kill_at_step, capsys, loader):
    """``--save-every`` writes last.pt inside an epoch; a run killed there loses only the steps after
    that save and resumes to the weights and train figures of a run that never stopped, whichever
    loader drew its batches (the stream loader without workers crops in this process)."""
    from safetensors.torch import load_file

    from ranlens.cli import main
    from ranlens.model.progress import run_progress

    # 25 training images in batches of 4: 6 steps an epoch; trivial augment and cutout draw per image
    common = dict(data=str(tiny_folder), epochs=2, batch_size=4, cutout=8, trivial_augment=True, threads=1, **loader)
    straight = train(TrainConfig(out=str(tmp_path / "straight"), save_every=0, **common))

    run = tmp_path / "killed"
    begun = kill_at_step(9)  # the third step of epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(run), save_every=1e-9, **common))  # a save after every step
    saved = torch.load(run / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["steps"], saved["sums"]["seen"]) == (1, 2, 8)
    # `ranlens status` tells where it stopped, and the time left at the pace of its one epoch
    stopped = run_progress(run)
    assert (stopped.epochs_done, stopped.steps_done, stopped.steps_per_epoch, stopped.finished) == (1, 2, 6, False)
    assert stopped.seconds_left == pytest.approx((1 - 2 / 6) * stopped.epoch_seconds)
    capsys.readouterr()  # the training's own output
    main(["status", str(run)])
    assert capsys.readouterr().out.startswith(f"{run}: attention56_cifar epoch 1/2 + 2/6 batches, test ")

    resumed = train(TrainConfig(out=str(run), save_every=1e-9, **common))
    assert len(begun) == 9 + 4  # the resume trained the 4 steps left, not the 2 saved again
    assert [h["epoch"] for h in resumed] == [1, 2]
    # the epoch's figures cover all its steps, those before the stop included
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert resumed[1][key] == pytest.approx(straight[1][key], rel=1e-4, abs=1e-5)
    assert "steps" not in torch.load(run / "last.pt", weights_only=True)  # the epoch's end was saved last
    done = run_progress(run)
    assert (done.epochs_done, done.steps_done, done.finished, done.seconds_left) == (2, 0, True, 0)
    assert done.test_acc == resumed[-1]["test_acc"] and done.test_images == 8
    a = load_file(str(tmp_path / "straight" / "epoch002.safetensors"))
    b = load_file(str(run / "epoch002.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_a_stop_while_the_epoch_record_is_written_resumes(tiny_folder, tmp_path, monkeypatch):
    """The epoch's record (metrics.json) is written, whole, before last.pt names the epoch done: a stop
    between the two must not leave a run whose resume cannot find the record of an epoch it skips."""
    real = Path.write_text

    def stopped(self, *args, **kwargs):
        if self.name.startswith("metrics.json"):
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    common = dict(out=str(tmp_path / "run"), data=str(tiny_folder), epochs=2, batch_size=4, save_every=0, threads=1)
    monkeypatch.setattr(Path, "write_text", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**common))
    monkeypatch.undo()
    assert [h["epoch"] for h in train(TrainConfig(**common))] == [1, 2]
    assert [h["epoch"] for h in json.loads((tmp_path / "run" / "metrics.json").read_text())] == [1, 2]


def test_status_of_a_folder_with_no_run_is_one_line(tmp_path, capsys):
    from ranlens.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["status", str(tmp_path)])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (f"ranlens status: error: {tmp_path} holds no training run: it has no "
                                       "config.json (a run writes one when it starts)\n")


def test_save_every_zero_saves_at_epoch_ends_only(tiny_folder, tmp_path, kill_at_step):
    kill_at_step(9)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "run"), data=str(tiny_folder), epochs=2, batch_size=4, save_every=0,
                          threads=1))
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and "steps" not in saved


def test_resume_flag_continues_a_run_with_its_recorded_settings(tiny_folder, tmp_path, capsys):
    """``ranlens train --resume RUN`` needs none of the run's settings typed again; what is typed wins,
    and a setting that would change what the run learns is refused as for any resume."""
    from safetensors.torch import load_file

    from ranlens.cli import main

    flags = ["--data", str(tiny_folder), "--epochs", "3", "--batch-size", "12", "--threads", "1", "--amp", "off",
             "--cutout", "4", "--trivial-augment", "--lr", "0.05", "--seed", "2"]
    main(["train", *flags, "--out", str(tmp_path / "straight")])
    run = tmp_path / "split"
    main(["train", *flags, "--out", str(run), "--stop-after", "1"])
    # stop_after is each invocation's own: the first resume is told to stop again, the second is not
    main(["train", "--resume", str(run), "--stop-after", "1"])
    assert len(json.loads((run / "metrics.json").read_text())) == 2
    refused = "lr=0.05; resuming with lr=0.1"  # a setting that would change the run
    for argv, message in ((["--resume", str(run), "--lr", "0.1"], refused),
                          (["--resume", str(tmp_path / "nothing")], "no run to resume"),
                          (["--resume", str(run), "--out", str(tmp_path / "other")], "leave out --out")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(["train", *argv])
        err = capsys.readouterr().err
        assert exited.value.code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    main(["train", "--resume", str(run)])
    assert len(json.loads((run / "metrics.json").read_text())) == 3
    a, b = (load_file(str(r / "epoch003.safetensors")) for r in (tmp_path / "straight", run))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_resumed_config_reads_what_an_old_run_meant(tmp_path):
    from ranlens.model.train import resumed_config

    # config.json of a run made before --amp and --loader existed, with a stop-after of its own
    recorded = {k: v for k, v in asdict(TrainConfig(epochs=9, lr=0.3, stop_after=2)).items()
                if k not in ("amp", "loader", "trivial_augment")}
    (tmp_path / "config.json").write_text(json.dumps({**recorded, "classes": ["a", "b"], "world_size": 1}))
    cfg = resumed_config(tmp_path, {"threads": 3})
    assert (cfg.epochs, cfg.lr, cfg.threads, cfg.stop_after) == (9, 0.3, 3, 0)
    assert (cfg.amp, cfg.loader, cfg.trivial_augment, cfg.out) == ("off", "memory", False, str(tmp_path))


def test_resume_uses_the_saved_optimizer_state(tiny_folder, tmp_path):
    """Momentum only lives in last.pt: zeroing it there must change the resumed run."""
    from safetensors.torch import load_file

    common = dict(data=str(tiny_folder), epochs=2, batch_size=12, threads=1)
    runs = {}
    for name in ("kept", "zeroed"):
        run = tmp_path / name
        train(TrainConfig(out=str(run), stop_after=1, **common))
        if name == "zeroed":
            state = torch.load(run / "last.pt", weights_only=True)
            buffers = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
            assert buffers and any(float(b.abs().max()) > 0 for b in buffers)
            for b in buffers:
                b.zero_()
            torch.save(state, run / "last.pt")
        train(TrainConfig(out=str(run), **common))
        runs[name] = load_file(str(run / "epoch002.safetensors"))
    assert any(not torch.allclose(runs["kept"][k], runs["zeroed"][k]) for k in runs["kept"])


@pytest.mark.parametrize("setting,value", [
    ("epochs", 3), ("lr", 0.1), ("warmup", 0.3), ("cutout", 4), ("label_smoothing", 0.0), ("momentum", 0.8),
    ("weight_decay", 1e-3), ("amp", "bf16"), ("seed", 1), ("batch_size", 6), ("limit_train", 10),
    ("limit_test", 2), ("source", "torchvision"), ("arch", "attention92_cifar"), ("teacher", "attention56_cifar.v7"),
    ("distill_weight", 0.9), ("distill_temperature", 2.0),
])
def test_resume_refuses_any_changed_setting(tiny_folder, tmp_path, setting, value):
    # as a run records them: resolved, not "auto" or 0 (each setting is checked, in order)
    common = dict(data=str(tiny_folder), epochs=2, batch_size=12, threads=1, amp="off", device="cpu", image_size=32,
                  loader="memory")
    run = tmp_path / "run"
    run.mkdir()
    # only last.pt matters for the check, and writing it takes no training
    torch.save({"config": {**asdict(TrainConfig(out=str(run), **common)), "stop_after": 1}}, run / "last.pt")
    with pytest.raises(ValueError) as refused:
        train(TrainConfig(out=str(run), **{**common, setting: value}))
    old = common.get(setting, getattr(TrainConfig(), setting))
    assert f"{setting}={old!r}" in str(refused.value) and f"{setting}={value!r}" in str(refused.value)
    assert not (run / "config.json").exists()


def test_resume_refuses_a_changed_init(tiny_folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": asdict(TrainConfig(out=str(run), data=str(tiny_folder), amp="off"))}, run / "last.pt")
    with pytest.raises(ValueError, match="init=''; resuming with init='other.safetensors'"):
        train(TrainConfig(out=str(run), data=str(tiny_folder), amp="off", init="other.safetensors"))


def test_a_few_steps_lower_the_loss(tiny_folder):
    split = load_split(tiny_folder, "train")
    torch.manual_seed(0)
    model = get_model("attention56_cifar", num_classes=2).train()
    optimizer = make_optimizer(model, TrainConfig(lr=0.05, weight_decay=0.0))
    x = normalize(split.images[:16], CIFAR_MEAN, CIFAR_STD)
    y = split.labels[:16]
    losses = [float(train_step(model, optimizer, x, y)[1]) for _ in range(6)]
    # the same batch every step, in train mode (BN on batch statistics): only the update moves the loss
    assert losses[-1] < 0.5 * losses[0], losses


def test_export_of_a_warm_started_run_records_its_lineage_and_facts(tiny_folder, tmp_path, monkeypatch):
    from ranlens.cli import main
    from ranlens.model.train import cpu_model
    from ranlens.model.weights import Weights

    shipped = tmp_path / "weights"
    shipped.mkdir()
    common = dict(data=str(tiny_folder), epochs=1, batch_size=12, threads=1)
    train(TrainConfig(out=str(tmp_path / "first"), amp="off", **common))
    # as written before --cutout, --amp and the recorded facts existed: export must still work and
    # read the run as what it was then (no cutout, float32, CIFAR statistics, machine not recorded)
    config_path = tmp_path / "first" / "config.json"
    old_keys = ("cutout", "amp", "mean", "std", "input_size", "machine", "train_images", "test_images")
    config_path.write_text(json.dumps({k: v for k, v in json.loads(config_path.read_text()).items()
                                       if k not in old_keys}))
    main(["export", str(tmp_path / "first"), "--name", "tiny.v1", "--weights-dir", str(shipped)])
    # --init as typed, relative to where training runs; the export below runs in another folder
    monkeypatch.chdir(tmp_path)
    train(TrainConfig(out=str(tmp_path / "second"), init="weights/tiny.v1.safetensors", lr=0.05, cutout=4,
                      trivial_augment=True, amp="bf16", **common))
    monkeypatch.chdir(tiny_folder)
    config_path = tmp_path / "second" / "config.json"
    recorded = json.loads(config_path.read_text())
    assert recorded["init"] == str(shipped / "tiny.v1.safetensors")  # absolute: found from anywhere
    assert recorded["mean"] == [0.4914, 0.4822, 0.4465] and recorded["input_size"] == 32
    assert recorded["train_images"] == 25 and recorded["machine"]["threads"] == 1
    # export takes the statistics from the run, not from constants
    config_path.write_text(json.dumps({**recorded, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}))
    main(["export", str(tmp_path / "second"), "--name", "tiny.v2", "--weights-dir", str(shipped)])

    first = Weights.from_manifest(shipped / "tiny.v1.json")
    second = Weights.from_manifest(shipped / "tiny.v2.json")
    assert second.classes == ("cat", "dog")  # from the run, not assumed to be CIFAR-10
    assert first.classes == ("cat", "dog")
    assert second.mean == (0.5, 0.4, 0.3) and second.std == (0.2, 0.2, 0.2) and second.input_size == 32
    assert first.mean == (0.4914, 0.4822, 0.4465) and first.std == (0.247, 0.2435, 0.2616)
    assert first.recipe["amp"] == "off" and first.recipe["machine"]["cpu"] == "not recorded"
    assert first.recipe["hardware"].startswith("not recorded, 1 thread, float32")
    machine = second.recipe["machine"]
    assert machine["cpu"] == cpu_model() != "" and machine["torch"] == torch.__version__
    assert machine["threads"] == 1 and machine["logical_cpus"] >= 1 and machine["precision"] == "bfloat16 autocast"
    assert second.recipe["amp"] == "bf16" and "--amp bf16" in second.recipe["command"]
    assert second.recipe["hardware"].startswith(f"{cpu_model()} ({machine['logical_cpus']} logical CPUs), 1 thread, bfloat16")
    assert second.recipe["train_data"] == f"train split of {tiny_folder} (folder), 25 images"
    assert first.recipe["total_epochs"] == 1 and "warm_start" not in first.recipe
    assert second.recipe["warm_start"]["from"] == "tiny.v1"
    assert second.recipe["warm_start"]["sha256"] == first.sha256
    assert second.recipe["total_epochs"] == 2
    assert "--init" in second.recipe["command"] and "--lr 0.05" in second.recipe["command"]
    assert "--epochs 1" in second.recipe["command"] and "--out" not in second.recipe["command"]
    assert "--cutout 4" in second.recipe["command"] and "--cutout" not in first.recipe["command"]
    assert second.recipe["cutout"] == 4 and second.recipe["augmentation"].endswith("cutout 4x4")
    assert "cutout" not in first.recipe["augmentation"]
    assert "TrivialAugment" in second.recipe["augmentation"] and second.recipe["trivial_augment"] is True
    # a run that recorded its --init as typed (as runs once did), exported where that path leads nowhere:
    # refused, not a manifest whose parent has no hash and no recipe
    config_path.write_text(json.dumps({**recorded, "init": "weights/tiny.v1.safetensors"}))
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "second"), "--name", "tiny.v3", "--weights-dir", str(shipped)])
    assert not (shipped / "tiny.v3.json").exists()
    assert "--trivial-augment" in second.recipe["command"]
    assert "TrivialAugment" not in first.recipe["augmentation"] and "trivial_augment" not in first.recipe


def test_curves_chain_runs_and_round_trip(tmp_path):
    from ranlens.cli import main

    def history(accs):
        return [{"epoch": i + 1, "train_loss": 1 - a, "train_acc": a, "test_loss": 1 - a, "test_acc": a}
                for i, a in enumerate(accs)]

    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "metrics.json").write_text(json.dumps(history([0.4, 0.6])))
    (tmp_path / "second.json").write_text(json.dumps(history([0.55, 0.7, 0.8])))
    main(["curves", str(tmp_path / "first"), str(tmp_path / "second.json"),
          "--out", str(tmp_path / "curves.png"), "--write-metrics", str(tmp_path / "all.json")])
    assert Image.open(tmp_path / "curves.png").size[0] > 500
    runs = json.loads((tmp_path / "all.json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["first", "second.json"] and len(runs[1]["history"]) == 3
    # the combined file is itself an input: redrawing from it needs no run folders
    main(["curves", str(tmp_path / "all.json"), "--out", str(tmp_path / "again.png")])
    assert Image.open(tmp_path / "again.png").size == Image.open(tmp_path / "curves.png").size


def test_schedule_with_swa_decays_to_the_swa_rate_and_holds_it():
    cfg = TrainConfig(lr=0.2, warmup=0.1, swa_lr=0.03)
    values = [lr_at(s, 1000, cfg, swa_steps=400) for s in range(1000)]
    # warm-up over 10% of the 600 decaying steps, then down to the SWA rate, which the last 400 keep
    assert values[0] == pytest.approx(0.02) and values.index(max(values)) == 60
    assert values[599] == pytest.approx(0.03, rel=1e-3) and min(values[60:600]) > 0.03
    assert values[600:] == [0.03] * 400
    assert [lr_at(s, 1000, cfg) for s in range(1000)] == [lr_at(s, 1000, cfg, 0) for s in range(1000)]


def test_swa_checkpoints_the_average_of_the_epochs_weights_and_resumes(tiny_folder, tmp_path):
    """With --swa 2 of 3 epochs, epoch 3's checkpoint holds the mean of the weights SGD reached at
    the end of epochs 2 and 3 (last.pt keeps them), with batch-norm statistics of its own; a run
    stopped inside the averaging resumes to the same checkpoint."""
    from safetensors.torch import load_file

    common = dict(data=str(tiny_folder), epochs=3, batch_size=12, threads=1, amp="off", swa=2, swa_lr=0.05)
    run = tmp_path / "stopped"
    sgd = {}
    for epoch in (1, 2):
        history = train(TrainConfig(out=str(run), stop_after=1, **common))
        sgd[epoch] = torch.load(run / "last.pt", weights_only=True)["model"]
    history = train(TrainConfig(out=str(run), **common))
    sgd[3] = torch.load(run / "last.pt", weights_only=True)["model"]
    assert "swa_models" not in history[0] and [h["swa_models"] for h in history[1:]] == [1, 2]
    assert all(0 <= h["sgd_test_acc"] <= 1 for h in history[1:])
    assert [h["lr_end"] for h in history[1:]] == [0.05, 0.05]

    averaged = load_file(str(run / "epoch003.safetensors"))
    for name in ("stem.0.weight", "classifier.weight"):
        key = next(k for k in averaged if k.endswith(name))
        torch.testing.assert_close(averaged[key], (sgd[2][key] + sgd[3][key]) / 2)
        assert not torch.allclose(averaged[key], sgd[3][key])
    means = [k for k in averaged if k.endswith("running_mean")]
    assert means and any(not torch.allclose(averaged[k], sgd[3][k]) for k in means)
    # epoch 2's checkpoint is the one-model "average": SGD's weights, with recomputed statistics
    first = load_file(str(run / "epoch002.safetensors"))
    key = "classifier.weight"
    torch.testing.assert_close(first[key], sgd[2][key])

    straight = train(TrainConfig(out=str(tmp_path / "straight"), **common))
    assert [h["test_acc"] for h in straight] == [h["test_acc"] for h in history]
    again = load_file(str(tmp_path / "straight" / "epoch003.safetensors"))
    for key in averaged:
        torch.testing.assert_close(again[key], averaged[key], rtol=1e-4, atol=1e-5)

    # the manifest says what the checkpoint is: an average, after which schedule
    from ranlens.cli import main
    from ranlens.model.weights import Weights

    main(["export", str(run), "--name", "tiny.swa", "--weights-dir", str(tmp_path)])
    recipe = Weights.from_manifest(tmp_path / "tiny.swa.json").recipe
    assert recipe["swa"] == 2 and recipe["swa_lr"] == 0.05 and "--swa 2 --swa-lr 0.05" in recipe["command"]
    assert recipe["schedule"].startswith("linear warm-up then cosine decay to 0.05 over 1 epoch, then 2 epochs "
                                         "at 0.05, the weights at the end of each averaged")


def test_a_finished_averaging_run_lengthens_to_the_run_planned_that_long(tiny_folder, tmp_path):
    """Resuming with --epochs and --swa both grown by one continues the average: the result is the
    run that planned 3 averaged epochs of 4 from the start, and its config.json says so."""
    from safetensors.torch import load_file

    common = dict(data=str(tiny_folder), batch_size=12, threads=1, amp="off", swa_lr=0.05)
    run = tmp_path / "lengthened"
    train(TrainConfig(out=str(run), epochs=3, swa=2, **common))
    with pytest.raises(ValueError, match="swa=2; resuming with swa=3 .* grow by the same number"):
        train(TrainConfig(out=str(run), epochs=3, swa=3, **common))
    with pytest.raises(ValueError, match="epochs=3; resuming with epochs=5"):
        train(TrainConfig(out=str(run), epochs=5, swa=3, **common))
    history = train(TrainConfig(out=str(run), epochs=4, swa=3, **common))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and [h.get("swa_models") for h in history] == [None, 1, 2, 3]
    config = json.loads((run / "config.json").read_text())
    assert (config["epochs"], config["swa"]) == (4, 3)

    straight = train(TrainConfig(out=str(tmp_path / "straight"), epochs=4, swa=3, **common))
    assert [h["test_acc"] for h in straight] == [h["test_acc"] for h in history]
    a, b = load_file(str(run / "epoch004.safetensors")), load_file(str(tmp_path / "straight" / "epoch004.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    # and the lengthening is real: three epochs' weights averaged, not epoch 3's average again
    assert not torch.allclose(a["classifier.weight"], load_file(str(run / "epoch003.safetensors"))["classifier.weight"])


@pytest.mark.parametrize("settings,message", [
    (dict(swa=3, epochs=2), "N must be 0..2"), (dict(swa=1, swa_lr=0.0), "--swa-lr must be positive"),
    (dict(swa=1, loader="stream"), "--loader memory"),
])
def test_swa_refuses_settings_it_cannot_honour(tiny_folder, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(out=str(tmp_path / "run"), data=str(tiny_folder), threads=1, amp="off", **settings))


def test_distillation_loss_is_zero_at_the_teachers_predictions_and_pulls_towards_them():
    from ranlens.model.distill import distillation_loss

    teacher_logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.5]])
    targets = torch.softmax(teacher_logits / 4.0, dim=1)
    assert float(distillation_loss(teacher_logits, targets, 4.0)) == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(2, 3, requires_grad=True)
    loss = distillation_loss(student, targets, 4.0)
    assert float(loss.detach()) > 0
    loss.backward()
    # a gradient step raises the logits the teachers favour
    assert (-student.grad).argmax(1).tolist() == teacher_logits.argmax(1).tolist()
    with pytest.raises(ValueError, match="temperature must be positive"):
        distillation_loss(student, targets, 0.0)


TINY_RUN = dict(epochs=1, batch_size=12, threads=1, amp="off")


@pytest.fixture
def tiny_teacher(tiny_folder, tmp_path):
    """A one-epoch network on the tiny folder, exported as ``tiny.v1`` into ``tmp_path/weights``."""
    from ranlens.cli import main

    shipped = tmp_path / "weights"
    shipped.mkdir()
    train(TrainConfig(out=str(tmp_path / "teacher"), data=str(tiny_folder), **TINY_RUN))
    main(["export", str(tmp_path / "teacher"), "--name", "tiny.v1", "--weights-dir", str(shipped)])
    return shipped


def test_a_distilled_run_learns_from_its_teacher_and_its_export_names_it(tiny_folder, tiny_teacher, tmp_path):
    from ranlens.cli import main
    from ranlens.model.weights import Weights, read_checkpoint

    shipped = tiny_teacher
    # stopped after the first of two epochs, so the resume at the end has an epoch to train (a finished
    # run's resume only says it has finished)
    common = dict(data=str(tiny_folder), **{**TINY_RUN, "epochs": 2})
    manifest = str(shipped / "tiny.v1.json")
    train(TrainConfig(out=str(tmp_path / "taught"), teacher=manifest, distill_weight=0.7, seed=1, stop_after=1,
                      **common))
    train(TrainConfig(out=str(tmp_path / "alone"), seed=1, stop_after=1, **common))
    taught = read_checkpoint(tmp_path / "taught" / "epoch001.safetensors")
    alone = read_checkpoint(tmp_path / "alone" / "epoch001.safetensors")
    # the same seed, data and schedule: only the teacher's term can make them differ
    assert any(not torch.equal(taught[k], alone[k]) for k in taught)

    main(["export", str(tmp_path / "taught"), "--name", "tiny.v2", "--weights-dir", str(shipped)])
    recipe = Weights.from_manifest(shipped / "tiny.v2.json").recipe
    teacher = Weights.from_manifest(shipped / "tiny.v1.json")
    assert recipe["distillation"]["weight"] == 0.7 and recipe["distillation"]["temperature"] == 4.0
    assert [(t["name"], t["sha256"]) for t in recipe["distillation"]["teachers"]] == [("tiny.v1", teacher.sha256)]
    assert f"--teacher {manifest}" in recipe["command"] and "--distill-weight 0.7" in recipe["command"]
    main(["export", str(tmp_path / "alone"), "--name", "tiny.v3", "--weights-dir", str(shipped)])
    assert "distillation" not in Weights.from_manifest(shipped / "tiny.v3.json").recipe

    # the teacher's name now means other weights: resuming the taught run would learn from another network
    from ranlens.model.weights import sha256_of

    shutil.copyfile(tmp_path / "alone" / "epoch001.safetensors", shipped / "tiny.v1.safetensors")
    (shipped / "tiny.v1.json").write_text(json.dumps({**json.loads((shipped / "tiny.v1.json").read_text()),
                                                      "sha256": sha256_of(shipped / "tiny.v1.safetensors")}))
    with pytest.raises(ValueError, match="teacher tiny.v1 is not the network .* started learning from"):
        train(TrainConfig(out=str(tmp_path / "taught"), teacher=manifest, distill_weight=0.7, seed=1, **common))


def test_a_teacher_that_reads_other_inputs_or_classes_is_refused(tiny_folder, tiny_teacher, tmp_path):
    from ranlens.model.weights import WeightsError

    shipped = tiny_teacher
    common = dict(data=str(tiny_folder), **TINY_RUN)
    manifest = json.loads((shipped / "tiny.v1.json").read_text())
    odd = shipped / "odd.json"
    odd.write_text(json.dumps({**manifest, "name": "odd", "classes": ["dog", "cat"], "mean": [0.5, 0.5, 0.5]}))
    with pytest.raises(ValueError, match=r"teacher odd cannot teach this run: its classes \['dog', 'cat'\].*"
                                         r"normalises with mean \[0.5, 0.5, 0.5\]"):
        train(TrainConfig(out=str(tmp_path / "taught"), teacher=str(odd), **common))
    with pytest.raises(WeightsError, match="teacher 'attention56_cifar.v0': unknown weights"):
        train(TrainConfig(out=str(tmp_path / "taught2"), teacher="attention56_cifar.v0", **common))
    assert not (tmp_path / "taught2").exists()  # refused before any work
    with pytest.raises(ValueError, match=r"--distill-weight .* must be in \(0, 1\], got 1.5"):
        train(TrainConfig(out=str(tmp_path / "taught3"), teacher=str(odd), distill_weight=1.5, **common))


# ---- refusals before (or instead of) training on the wrong thing


def _copy_folder(tiny_folder: Path, to: Path) -> Path:
    shutil.copytree(tiny_folder, to)
    return to


def test_resume_refuses_another_data_set(tiny_folder, tmp_path):
    """``--data`` may move (it is no setting that shapes the run), but a resume on a folder of other
    classes or another number of images would train on another data set: refused, naming what
    config.json recorded; a 3-class set once failed in torch's load_state_dict instead."""
    from ranlens.model.weights import WeightsError

    run = tmp_path / "run"
    common = dict(out=str(run), epochs=2, batch_size=12, threads=1, amp="off")
    train(TrainConfig(data=str(tiny_folder), stop_after=1, **common))
    more_classes = _copy_folder(tiny_folder, tmp_path / "more-classes")
    for split in ("train", "test"):
        shutil.copytree(more_classes / split / "dog", more_classes / split / "fox")
    with pytest.raises(ValueError, match=r"recorded classes=\['cat', 'dog'\], but --data .*more-classes gives "
                                         r"classes=\['cat', 'dog', 'fox'\]"):
        train(TrainConfig(data=str(more_classes), **common))
    more_images = _copy_folder(tiny_folder, tmp_path / "more-images")
    shutil.copyfile(more_images / "train" / "cat" / "0.png", more_images / "train" / "cat" / "extra.png")
    with pytest.raises(ValueError, match="recorded train_images=25, but --data .* gives train_images=26"):
        train(TrainConfig(data=str(more_images), **common))
    fewer_tests = _copy_folder(tiny_folder, tmp_path / "fewer-tests")
    (fewer_tests / "test" / "cat" / "0.png").unlink()
    with pytest.raises(ValueError, match="recorded test_images=8, but --data .* gives test_images=7"):
        train(TrainConfig(data=str(fewer_tests), **common))
    # a run whose config.json recorded none of it: last.pt's network does not fit, said as for any checkpoint
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                 if k not in ("classes", "train_images", "test_images")}))
    with pytest.raises(WeightsError, match=r"checkpoint .*last\.pt does not fit this architecture: .*classifier"):
        train(TrainConfig(data=str(more_classes), **common))
    assert json.loads((run / "metrics.json").read_text())[0]["epoch"] == 1
    (run / "config.json").write_text(json.dumps(config))
    # the same images in another folder: the run goes on
    moved = _copy_folder(tiny_folder, tmp_path / "moved")
    assert [h["epoch"] for h in train(TrainConfig(data=str(moved), **common))] == [1, 2]


@pytest.mark.parametrize("loader", [{}, {"loader": "stream", "workers": 0}], ids=["memory", "stream"])
def test_a_test_split_of_other_classes_is_refused(tiny_folder, tmp_path, loader):
    """Each split numbers its classes by its own folder names: a test split with ``wolf`` where training
    has ``dog`` would score every wolf as label 1, dog."""
    (tiny_folder / "test" / "dog").rename(tiny_folder / "test" / "wolf")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"have different classes: train \['cat', 'dog'\], test \['cat', 'wolf'\]"):
        train(TrainConfig(out=str(run), data=str(tiny_folder), epochs=1, batch_size=12, threads=1, amp="off",
                          **loader))
    assert not (run / "config.json").exists()


def test_torchvision_source_refuses_another_image_size(tmp_path):
    """torchvision's CIFAR-10 comes at 32 pixels and was used so whatever --image-size said: refused before
    any download (``data`` does not exist) and before the run folder is made."""
    run = tmp_path / "run"
    common = dict(out=str(run), data=str(tmp_path / "cifar"), source="torchvision", threads=1, amp="off")
    for settings, size in ((dict(image_size=64), 64), (dict(arch="attention56"), 224)):
        with pytest.raises(ValueError, match=f"--source torchvision gives CIFAR-10's images at their own 32 pixels, "
                                             f"not the {size} asked for"):
            train(TrainConfig(**common, **settings))
    with pytest.raises(ValueError, match="not the 48 asked for"):
        load_split(tmp_path / "cifar", "test", 48, "torchvision")  # as `ranlens evaluate` reads it
    assert not run.exists() and not (tmp_path / "cifar").exists()


def test_stream_evaluation_sees_the_crop_the_app_serves_and_evaluate_reads(tmp_path, monkeypatch):
    """The test accuracy a stream-loader run reports, ``ranlens evaluate`` and the app all see an image
    through one crop (shorter side to S, centre square); ImageNet's resize to S*256/224 made the run's
    figure that of another, tighter view."""
    from ranlens.model import stream
    from ranlens.model.imaging import decode_file
    from ranlens.model.preprocess import Preprocess

    monkeypatch.setattr("ranlens.model.data.CACHE_DIR", tmp_path / "cache")
    folder = tmp_path / "data" / "test" / "thing"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i, (w, h) in enumerate([(32, 32), (50, 40), (40, 70), (200, 30)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    streamed = stream.image_folder(tmp_path / "data", "test", stream.eval_transform(32))
    read = load_split(tmp_path / "data", "test", 32)  # what `ranlens evaluate` scores
    served = Preprocess(32, CIFAR_MEAN, CIFAR_STD)  # Weights.transforms(): what the app feeds the model
    for i, (image, label) in enumerate(streamed):
        assert image.dtype == torch.uint8 and label == 0
        assert torch.equal(image, read.images[i]), i
        crop = served.crop(decode_file(folder / f"{i}.png", 10**8))
        assert torch.equal(image, torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1)), i


def test_a_bad_init_is_refused_before_the_data_is_read(tiny_folder, tmp_path, monkeypatch):
    from ranlens.model.weights import WeightsError, save_checkpoint

    def not_yet(*args, **kwargs):
        raise AssertionError("the data set was read before --init was checked")

    monkeypatch.setattr("ranlens.model.train.load_split", not_yet)
    monkeypatch.setattr("ranlens.model.stream.image_folder", not_yet)
    other = tmp_path / "other.safetensors"
    save_checkpoint(torch.nn.Linear(2, 2), other, "attention92_cifar")
    run = tmp_path / "run"
    common = dict(out=str(run), data=str(tiny_folder), threads=1, amp="off")
    with pytest.raises(WeightsError, match="cannot read checkpoint .*missing.safetensors"):
        train(TrainConfig(init=str(tmp_path / "missing.safetensors"), **common))
    with pytest.raises(WeightsError, match="holds architecture 'attention92_cifar', expected 'attention56_cifar'"):
        train(TrainConfig(init=str(other), **common))
    assert not run.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
@pytest.mark.parametrize("setting,enabled_by", [("swa_lr", dict(swa=1)), ("distill_temperature", dict(teacher="x"))])
def test_swa_lr_and_distill_temperature_must_be_finite_and_positive(tmp_path, setting, enabled_by, value):
    from ranlens.model.train import check_settings

    option = f"--{setting.replace('_', '-')}"
    with pytest.raises(ValueError, match=f"{option} must be positive, got {value}"):
        train(TrainConfig(out=str(tmp_path / "run"), data=str(tmp_path / "nodata"), threads=1,
                          **{setting: value, **enabled_by}))
    assert not (tmp_path / "run").exists()
    check_settings(TrainConfig(**{setting: value}))  # not used without its option: a run resumes as it recorded


def test_config_json_is_written_whole_or_not_at_all(tiny_folder, tmp_path, monkeypatch):
    """A resume, ``ranlens status`` and ``ranlens export`` read config.json: a stop while it is written
    leaves none (the run then starts afresh), never half of one."""
    real = Path.write_text

    def stopped_halfway(self, text, *args, **kwargs):
        if "config.json" in self.name:
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        return real(self, text, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(Path, "write_text", stopped_halfway)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(run), data=str(tiny_folder), epochs=1, batch_size=12, threads=1, amp="off"))
    assert [p.name for p in run.iterdir()] == []


def test_schedule_without_warmup_starts_at_the_peak():
    """``--warmup 0`` is no warm-up: the first step runs at --lr (a one-step warm-up at a tenth once
    stood in), with --swa too; a warm-up of any length is as it was, step for step."""
    from ranlens.cli import _schedule

    cfg = TrainConfig(lr=0.2, warmup=0.0, swa_lr=0.03)
    values = [lr_at(s, 1000, cfg) for s in range(1000)]
    assert values[0] == 0.2 and all(a >= b for a, b in zip(values, values[1:])) and values[-1] < 1e-5
    averaged = [lr_at(s, 1000, cfg, swa_steps=400) for s in range(1000)]
    assert averaged[0] == 0.2 and averaged[599] == pytest.approx(0.03, rel=1e-3) and averaged[600:] == [0.03] * 400

    def before(step: int, total: int, cfg: TrainConfig, swa_steps: int = 0) -> float:  # lr_at as it was
        decay = total - swa_steps
        if step >= decay:
            return cfg.swa_lr
        floor = cfg.swa_lr if swa_steps else 0.0
        warm = max(1, int(cfg.warmup * decay))
        if step < warm:
            return cfg.lr * (0.1 + 0.9 * step / warm)
        progress = min(1.0, (step - warm) / max(1, decay - warm))
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    for warmup, total, swa_steps in ((0.02, 5850, 0), (0.15, 1000, 0), (0.001, 300, 0), (0.1, 1000, 400)):
        cfg = TrainConfig(lr=0.1, warmup=warmup, swa_lr=0.01)
        assert [lr_at(s, total, cfg, swa_steps) for s in range(total)] == [
            before(s, total, cfg, swa_steps) for s in range(total)]
    # the manifest's words for it
    assert _schedule({"warmup": 0.0, "swa": 0}) == "cosine decay to zero, per batch"
    assert _schedule({"warmup": 0.0, "swa": 2, "epochs": 3, "swa_lr": 0.05}).startswith("cosine decay to 0.05 over")
    assert _schedule({"warmup": 0.1, "swa": 0}) == "linear warm-up then cosine decay to zero, per batch"


def test_the_runs_own_command_with_a_relative_init_resumes_it(tiny_folder, tmp_path, monkeypatch):
    """A new run records --init as an absolute path; running its command again, --init typed relative
    as before, resumes it rather than refusing a "changed" setting."""
    from ranlens.model.weights import save_checkpoint

    monkeypatch.chdir(tmp_path)
    save_checkpoint(get_model("attention56_cifar", num_classes=2), tmp_path / "parent.safetensors", "attention56_cifar")
    cfg = TrainConfig(data=str(tiny_folder), out=str(tmp_path / "run"), init="parent.safetensors", epochs=2,
                      stop_after=1, batch_size=12, threads=1, amp="off")
    assert len(train(cfg)) == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["init"] == str(tmp_path / "parent.safetensors")
    assert [h["epoch"] for h in train(replace(cfg, stop_after=0))] == [1, 2]
