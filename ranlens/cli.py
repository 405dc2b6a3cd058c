"""The ``ranlens`` command: train, status, evaluate, calibrate-ood, export, explain, figure, curves,
serve, serve-ray.

It sits above both sides: it uses ``ranlens.model`` and starts ``ranlens.app``; neither imports it.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

from ranlens.model.imaging import ImageError
from ranlens.model.weights import WEIGHTS_DIR, Weights, WeightsError, sha256_of


class CommandError(Exception):
    """A problem the person running the command can fix; printed as one line, no traceback."""


# --arch when neither it nor --weights names one (--weights DEFAULT)
DEFAULT_ARCH = "attention56_cifar"


def _checked(convert, ok, wanted: str):
    """An argparse type: ``convert`` the text, refused unless ``ok`` (argparse prints the option's name
    and ``wanted``), so a value no command can use fails before any model loads."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a whole number >= 1")
_positive_float = _checked(float, lambda v: 0 < v < math.inf, "a number > 0")
_fraction = _checked(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")
_opacity = _checked(float, lambda v: 0 <= v <= 1, "an opacity in [0, 1]")
_port = _checked(int, lambda v: 0 <= v <= 65535, "a port 0..65535 (0: any free port)")


def _train(args: argparse.Namespace) -> None:
    from ranlens.model.train import TrainConfig, check_settings, resumed_config, train, with_preset

    given = getattr(args, "given", ())
    if args.resume:
        # the run's own record stands in for the defaults (its preset already applied there)
        cfg = resumed_config(args.resume, {name: getattr(args, name) for name in given})
    else:
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
        # a preset's values stand in for the defaults; the options typed on the command line win
        cfg = with_preset(cfg, given=given)
    check_settings(cfg)  # train() checks again; here so a bad number is named before the data layout
    # a new run only: a run already made goes on with the data it recorded (refused now, a run made
    # on a flat folder before this check could never finish)
    if cfg.source == "folder" and not args.resume:
        _require_splits(cfg.data, "train", test=True)
    train(cfg)


def _require_splits(data: str | Path, command: str, test: bool) -> None:
    """``DATA/train`` (and with ``test``, ``DATA/test`` or ``DATA/val``) must exist: given a folder of
    class folders, the data module reads that one folder as every split (what ``evaluate`` wants), so
    a run would silently be tested on its own training images."""
    from ranlens.model.data import split_directory

    root = Path(data)
    if not root.is_dir():
        raise CommandError(f"--data {root}: no such folder")
    missing = [name for name in ("train", "test") if (name == "train" or test)
               and split_directory(root, name) == root]
    if missing:
        raise CommandError(f"--data {root} has no {' and no '.join(f'{m}/' for m in missing)} folder: {command} "
                           f"reads DATA/train/<class>/* and DATA/test/<class>/* (or DATA/val/<class>/*)")


def _status(args: argparse.Namespace) -> None:
    from ranlens.model.progress import run_progress

    missing = []
    for run in args.runs:
        try:
            print(run_progress(run).summary())
        except (FileNotFoundError, ValueError) as exc:  # the other runs are still worth a line each
            missing.append(str(exc))
    if missing:
        raise CommandError("; ".join(missing))


def _remembered(action: type[argparse.Action]) -> type[argparse.Action]:
    """``action`` that also notes its option in ``namespace.given`` when it appears on the command line
    (argparse calls actions only for options present), so a preset can tell typed values from defaults."""

    class Remembered(action):
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            namespace.given = {*getattr(namespace, "given", ()), self.dest}

    return Remembered


def _load(args: argparse.Namespace):
    """A model and its weights description from ``--weights`` (name or .json manifest). A shipped name
    or a manifest says which architecture its weights are for, so ``--arch`` is needed only to pick
    another architecture's DEFAULT; given beside weights for another one, it is refused."""
    from ranlens.model.registry import get_model
    from ranlens.model.weights import resolve_weights

    # a manifest that is not JSON or lacks a field is a WeightsError naming it (Weights.from_manifest)
    if args.weights == "DEFAULT":
        weights = resolve_weights(args.arch or DEFAULT_ARCH, "DEFAULT")
    else:
        weights = resolve_weights(None, args.weights)
    if args.arch is not None and weights.arch != args.arch:
        raise CommandError(f"--weights {args.weights} are for {weights.arch}, not --arch {args.arch}: leave out "
                           f"--arch (the weights name their architecture) or give weights for {args.arch}")
    return get_model(weights.arch, weights=weights), weights


def _evaluate(args: argparse.Namespace) -> None:
    from ranlens.model.evaluate import evaluate

    import torch

    if args.write_metrics and args.split != "test":
        # a manifest's metrics are its test-split figures: the app shows them as the model's accuracy and
        # serves the best top-1 by default, so a train-split figure there would pick and praise the wrong one
        args.command_parser.error(f"argument --write-metrics: records test-split metrics in the manifest; "
                                  f"leave it out with --split {args.split}, or evaluate --split test")
    confusion = _output_file("--confusion", args.confusion, figure=True) if args.confusion else None
    torch.set_num_threads(args.threads)
    model, weights = _load(args)
    result = evaluate(model, args.data, args.split, weights.mean, weights.std, args.source, weights.classes,
                      size=weights.input_size)
    dataset = args.dataset or f"{args.data} ({args.split} split)"
    print(f"{weights.name} on {dataset}")
    print(result.report())
    if confusion:
        result.save_confusion(confusion)
        print(f"confusion matrix written to {confusion}{_added_png(args.confusion, confusion)}")
    if args.write_metrics:
        updated = Weights(**{**weights.__dict__, "metrics": result.metrics(dataset)})
        print(f"metrics written to {updated.write_manifest()}")


def _output_file(option: str, value: str, figure: bool = False) -> Path:
    """Where a command will write ``option``'s file, checked and its folder made before the work, so
    minutes of evaluation do not end in "No such file or directory". A figure's name without an
    extension gets .png (matplotlib would add it without saying); one matplotlib cannot write is refused."""
    path = Path(value)
    if path.is_dir():
        raise CommandError(f"{option} {path} is a folder; give a file name, e.g. {path / 'figure.png'}")
    if figure:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        formats = FigureCanvasAgg.get_supported_filetypes()
        if not path.suffix:
            path = path.with_name(f"{path.name}.png")
        elif path.suffix[1:].lower() not in formats:
            raise CommandError(f"{option} {path}: cannot write a {path.suffix} figure; end the name in .png (or "
                               f"{', '.join(f'.{f}' for f in sorted(formats) if f != 'png')})")
    path.parent.mkdir(parents=True, exist_ok=True)
    _writable(option, path)
    return path


def _writable(option: str, path: Path) -> None:
    """Refuses a folder no file can be written to before any work, not after an evaluation."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".ranlens-probe-"):
            pass
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot write a file in {path.parent} ({exc.strerror or exc})") from None


def _added_png(given: str, path: Path) -> str:
    return " (.png added: the name given had no extension)" if Path(given) != path else ""


def _calibrate_ood(args: argparse.Namespace) -> None:
    """Chooses the out-of-distribution threshold on the train split and records it in the manifest
    (and, for knn, writes the bank beside it)."""
    from ranlens.model.data import count_images, split_directory
    from ranlens.model.evaluate import split_features
    from ranlens.model.explainer import Explainer
    from ranlens.model.imaging import ImageError, decode_image
    from ranlens.model.ood import DEFAULT_VIEWS, HEAD, OODError, calibrate, calibrate_knn, floor_to, parse_view

    import torch

    # everything the options alone decide is checked before the train split is scored (minutes);
    # --tpr, --k, --bank-size and --temperature are in range already (their argparse types)
    if args.source == "folder":
        _require_splits(args.data, "calibrate-ood", test=not args.no_test)
    if args.method == "knn":
        if args.k > args.bank_size:
            raise CommandError(f"--k {args.k} is more than the --bank-size {args.bank_size} images it is the k-th "
                               f"nearest of; choose --k <= --bank-size")
        if args.source == "folder":
            train_dir = split_directory(args.data, "train")
            images = count_images(train_dir)
            # the images outside the bank are what the threshold is chosen on
            if args.bank_size >= images:
                raise CommandError(f"--bank-size {args.bank_size} leaves no training images to calibrate on: "
                                   f"{train_dir} has {images}; choose fewer")
    torch.set_num_threads(args.threads)
    model, weights = _load(args)
    examples = []
    for path in map(Path, args.examples):  # read first: a wrong path should not cost a pass over the data
        try:
            examples.append((path, decode_image(path.read_bytes(), args.max_pixels)))
        except ImageError as exc:
            raise CommandError(f"{path}: {_one_line(exc)}") from exc
    if args.method == "energy":
        views = (HEAD,)
    else:
        views = tuple(v.strip() for v in args.views.split(",") if v.strip()) if args.views else DEFAULT_VIEWS
    try:
        for view in views:
            module = (parse_view(view) or (None,))[0]
            if module is not None and module not in model.module_names:
                raise OODError(f"OOD view {view!r}: {weights.arch} has no module {module!r}; it has "
                               f"{', '.join(model.module_names)}")
    except OODError as exc:
        raise CommandError(str(exc)) from exc
    read = dict(mean=weights.mean, std=weights.std, source=args.source, classes=weights.classes,
                size=weights.input_size, views=views)
    train_logits, train_features = split_features(model, args.data, "train", **read)
    test_logits, test_features = (None, None) if args.no_test else split_features(model, args.data, "test", **read)
    dataset = args.dataset or str(args.data)
    bank_file, payload = f"{weights.name}.ood.safetensors", None
    if args.method == "knn":
        try:
            result, payload = calibrate_knn(train_features, data=dataset, bank_file=bank_file,
                                            test_features=test_features, tpr=args.tpr, k=args.k,
                                            bank_size=args.bank_size, seed=args.seed)
        except OODError as exc:
            raise CommandError(str(exc)) from exc
        print(f"{weights.name}: distance to the {result.k}-th nearest of {result.bank_images} training images' "
              f"features in the views {', '.join(result.views)}, as the training percentile, the smallest of "
              f"them (higher = more like the training images)")
    else:
        result = calibrate(train_logits, data=dataset, test_logits=test_logits, tpr=args.tpr,
                           temperature=args.temperature)
        print(f"{weights.name}: energy score (T = {result.temperature:g}; higher = more like the training images)")
    print(f"  threshold {result.threshold:.4f} keeps {100 * result.train_tpr:.2f}% of "
          f"{result.train_images} training images in-distribution")
    if result.test_fraction_flagged is not None:
        print(f"  test split: {100 * result.test_fraction_flagged:.2f}% of {result.test_images} images flagged")
    # the new bank waits beside the weights (one file system, so moving it in is atomic) until the examples
    # are judged: stopped before then, the shipped bank and manifest still agree and the weights still load
    staging = Path(tempfile.mkdtemp() if args.dry_run else tempfile.mkdtemp(dir=weights.directory, prefix=".ood-"))
    try:
        if payload is not None:
            (staging / bank_file).write_bytes(payload)
        judging = Weights(**{**weights.__dict__, "ood": result.manifest(), "directory": staging})
        explainer = Explainer(model, judging)  # as the app will judge pictures with the new calibration
        for path, image in examples:
            seen = explainer.explain(image)
            verdict = "OUT OF DISTRIBUTION" if seen.out_of_distribution else "in distribution"
            print(f"  {path}: score {floor_to(seen.ood_score):.4f}  {verdict}  (top: {seen.predictions[0].label} "
                  f"{100 * seen.predictions[0].probability:.1f}%)")
        if args.dry_run:
            return
        updated = Weights(**{**weights.__dict__, "ood": result.manifest()})
        if payload is None:
            # energy now: the manifest first (moved in whole), then the bank an earlier knn calibration left,
            # which it no longer names; stopped between the two, a stray file is all that is left
            manifest = updated.write_manifest()
            (weights.directory / bank_file).unlink(missing_ok=True)
        else:
            # the new bank, then at once the manifest naming its hash: they disagree only while it is written
            os.replace(staging / bank_file, weights.directory / bank_file)
            manifest = updated.write_manifest()
            print(f"bank written to {weights.directory / bank_file}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"calibration written to {manifest}")


def _train_command(config: dict) -> str:
    """The ``ranlens train`` line that reproduces a run: every setting that differs from the default."""
    from ranlens.model.train import TrainConfig

    flags = [f"--{f.name.replace('_', '-')}" + ("" if isinstance(f.default, bool) else f" {config[f.name]}")
             for f in fields(TrainConfig)
             if f.name not in ("out", "data", "threads", "stop_after", "save_every", "workers") and f.name in config
             and config[f.name] != f.default]
    return " ".join(["ranlens train", *flags])


def _lineage(init: Path) -> dict:
    """What a warm-started run started from: the parent's name, hash and recipe, so the whole
    training behind a checkpoint stays on record."""
    manifest = init.with_suffix(".json")
    if manifest.is_file():
        parent = Weights.from_manifest(manifest)
        return {"from": parent.name, "sha256": parent.sha256, "recipe": parent.recipe}
    return {"from": init.name, "sha256": sha256_of(init), "recipe": None}


def _hardware(config: dict) -> tuple[str, dict]:
    """What the run trained on, as recorded in its config.json; runs made before the record say so."""
    machine = config.get("machine") or {
        "cpu": "not recorded", "threads": config["threads"],
        "precision": "bfloat16 autocast" if config["amp"] == "bf16" else "float32", "memory_format": "channels_last",
    }
    cpus = f" ({machine['logical_cpus']} logical CPUs)" if machine.get("logical_cpus") else ""
    torch_version = f", torch {machine['torch']}" if machine.get("torch") else ""
    threads = f"{machine['threads']} thread" + ("s" if machine["threads"] != 1 else "")
    where = f"{machine['cpu']}{cpus}, {threads}"
    if machine.get("gpu"):  # the GPU does the work; the host CPU only launches it
        gpus = f"{machine['processes']} x " if machine.get("processes", 1) > 1 else ""
        where = f"{gpus}{machine['gpu']} (CUDA), host {machine['cpu']}{cpus}"
    text = f"{where}, {machine['precision']}, {machine['memory_format']}{torch_version}"
    return text, machine


def _train_data(config: dict) -> str:
    where = f"{config['data']} ({config['source']})"
    images = config.get("train_images") or config["limit_train"]
    return f"train split of {where}" + (f", {images:,} images" if images else "")


def _schedule(config: dict) -> str:
    """The learning-rate schedule a run's settings describe, in words."""
    from ranlens.model.train import SWA_BN_IMAGES

    warm_up = "linear warm-up then " if config.get("warmup", 0) > 0 else ""
    if not config.get("swa"):
        return f"{warm_up}cosine decay to zero, per batch"
    def epochs(n: int) -> str:
        return f"{n} epoch" + ("s" if n != 1 else "")

    rest = config["epochs"] - config["swa"]
    decay = f"{warm_up}cosine decay to {config['swa_lr']:g} over {epochs(rest)}, then " if rest else ""
    return (f"{decay}{epochs(config['swa'])} at {config['swa_lr']:g}, the weights at the end of each averaged "
            f"(stochastic weight averaging); the checkpoint is the average, its batch-norm statistics "
            f"recomputed on {SWA_BN_IMAGES:,} training images (or all, if fewer)")


def _export(args: argparse.Namespace) -> None:
    """Copies a run's checkpoint into model/weights/ with a manifest carrying the run's facts."""
    from ranlens.model.registry import ARCHITECTURES
    from ranlens.model.train import CIFAR_MEAN, CIFAR_STD, LEGACY_SETTINGS, TrainConfig
    from ranlens.model.weights import CIFAR10_CLASSES, read_checkpoint

    name = args.name
    # a name becomes NAME.safetensors and NAME.json in --weights-dir: it must not lead out of it
    plain = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and ".." not in name
    if not plain or name.endswith((".json", ".safetensors")):
        raise CommandError(f"--name {name!r} is not a weights name: give a plain file stem such as "
                           f"attention56_cifar.v9 (letters, digits, '.', '_' and '-'; no path separators, '..' "
                           f"or extension)")
    target_dir = Path(args.weights_dir)
    if target_dir.exists() and not target_dir.is_dir():
        raise CommandError(f"--weights-dir {target_dir} is not a folder")
    # the default folder holds the shipped weights: a name already there is a checkpoint someone ships
    taken = [p for p in (target_dir / f"{name}.safetensors", target_dir / f"{name}.json") if p.exists()]
    if taken and not args.force:
        raise CommandError(f"{taken[0]} already exists: choose another --name (e.g. the next version) or "
                           f"--weights-dir, or give --force to replace it")
    run = Path(args.run)
    # a run made before a setting existed trained with what that setting meant then: no cutout, float32,
    # CIFAR-10 classes and statistics at the architecture's reference size
    recorded = json.loads((run / "config.json").read_text())
    legacy = {key: value(recorded) if callable(value) else value for key, value in LEGACY_SETTINGS.items()}
    config = {**asdict(TrainConfig()), **legacy, "classes": list(CIFAR10_CLASSES),
              "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), **recorded}
    if config["arch"] not in ARCHITECTURES:
        raise CommandError(f"{run / 'config.json'} names an unknown architecture {config['arch']!r}")
    input_size = config.get("input_size") or ARCHITECTURES[config["arch"]].reference_size
    history = json.loads((run / "metrics.json").read_text())
    epochs_done = args.epoch or len(history)
    if not 1 <= epochs_done <= len(history):
        raise CommandError(f"{run} has finished epochs 1..{len(history)}, not epoch {epochs_done}")
    source = run / f"epoch{epochs_done:03d}.safetensors"
    read_checkpoint(source, expected_arch=config["arch"])
    done = history[:epochs_done]
    hardware, machine = _hardware(config)
    recipe = {
        **{k: config[k] for k in ("epochs", "batch_size", "lr", "warmup", "momentum", "weight_decay",
                                  "label_smoothing", "cutout", "seed", "amp")},
        **({k: config[k] for k in ("swa", "swa_lr")} if config.get("swa") else {}),
        **({"trivial_augment": True} if config.get("trivial_augment") else {}),
        # which networks taught it, by hash: their recipes are in their own manifests
        **({"distillation": {"teachers": config.get("teachers", []), "weight": config["distill_weight"],
                             "temperature": config["distill_temperature"]}} if config.get("teacher") else {}),
        "epochs_completed": epochs_done,
        "optimizer": "SGD, Nesterov momentum; no weight decay on BN and biases",
        "schedule": _schedule(config),
        "augmentation": (f"random resized crop {input_size} (8-100% of the area), horizontal flip"
                         if config.get("loader") == "stream" else
                         f"random crop {input_size} with 4-pixel zero padding, horizontal flip")
        + (", TrivialAugment (torchvision TrivialAugmentWide)" if config.get("trivial_augment") else "")
        + (f", cutout {config['cutout']}x{config['cutout']}" if config["cutout"] else ""),
        "train_data": _train_data(config),
        "hardware": hardware,
        "machine": machine,
        "train_wall_hours": round(sum(h["epoch_seconds"] for h in done) / 3600, 2),
        "train_img_per_s": round(sum(h["train_img_per_s"] for h in done) / len(done), 1),
        "command": _train_command(config),
    }
    # a warm-started run adds to its parent's training; v1's manifest predates the total_* keys
    earlier = {}
    if config.get("init"):
        init = Path(config["init"])
        if not init.is_file():  # a manifest without its parent's hash and recipe would pass for a whole record
            where = (f"put it back at {init}" if init.is_absolute() else
                     f"export from the folder the run was started in (it is not found from {Path.cwd()})")
            raise CommandError(f"the run started from --init {init}, which is gone: {where}; the manifest records "
                               "the parent's name, hash and recipe from it")
        recipe["warm_start"] = _lineage(init)
        earlier = recipe["warm_start"]["recipe"] or {}
    recipe["total_epochs"] = epochs_done + earlier.get("total_epochs", earlier.get("epochs_completed", 0))
    recipe["total_train_wall_hours"] = round(
        recipe["train_wall_hours"] + earlier.get("total_train_wall_hours", earlier.get("train_wall_hours", 0)), 2)
    target = target_dir / f"{name}.safetensors"
    target_dir.mkdir(parents=True, exist_ok=True)
    # copied and hashed aside, then moved in and its manifest written at once: with --force, the weights
    # replaced keep their own manifest until the new pair is ready (copied over in place, a stop before the
    # manifest left new weights under the old one's hash, which no server would load)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, partial)
        weights = Weights(
            name=name, arch=config["arch"], file=target.name, sha256=sha256_of(partial),
            classes=tuple(config["classes"]), input_size=input_size, mean=tuple(config["mean"]),
            std=tuple(config["std"]), recipe=recipe,
            metrics={"note": "not yet measured: run ranlens evaluate --write-metrics"}, directory=target_dir,
        )
        os.replace(partial, target)
        manifest = weights.write_manifest()
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {target} and {manifest}")


def _unique_stems(paths: list[Path]) -> list[str]:
    """An output name per input: its stem, numbered where two inputs share one (a/photo.jpg and
    b/photo.jpg), so no input's files overwrite another's."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def _ood_line(result) -> str:
    """The out-of-distribution verdict on one picture, for a person reading the output, with each
    view's percentile where the calibration has views (the smallest is the score)."""
    from ranlens.model.ood import floor_to

    # rounded down, as the API and manifest.json give them: the printed comparison holds
    score = floor_to(result.ood_score)
    views = "" if not result.ood_views else " (" + ", ".join(f"{view} {floor_to(value):.4f}" for view, value in
                                                             result.ood_views.items()) + ")"
    if result.out_of_distribution is None:
        return (f"out-of-distribution score {score:.4f}{views}; no verdict: these weights have no OOD "
                f"calibration")
    if result.out_of_distribution:
        return (f"OUT OF DISTRIBUTION: score {score:.4f}{views} < threshold {result.ood_threshold:.4f}; "
                f"unlike the training images, the classes are a forced choice")
    return f"in distribution: score {score:.4f}{views} >= threshold {result.ood_threshold:.4f}"


def _explain(args: argparse.Namespace) -> None:
    """Overlays, raw masks and a JSON manifest for a batch of images."""
    from tqdm import tqdm

    from ranlens.model.explainer import Explainer, write_manifest
    from ranlens.model.imaging import ImageError, decode_image

    import torch

    torch.set_num_threads(args.threads)
    explainer = Explainer(*_load(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"model": explainer.name, "weights": explainer.weights.name, "images": {}}
    paths = list(dict.fromkeys(Path(p) for p in args.images))  # the same file twice is explained once
    failed = 0
    # the bar only where someone watches (a terminal); logs get the per-image lines alone
    for path, stem in zip(tqdm(paths, desc="explaining", unit="img", disable=None), _unique_stems(paths)):
        try:
            image = decode_image(path.read_bytes(), args.max_pixels)
        except (OSError, ImageError) as exc:
            failed += 1
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
            manifest["images"][str(path)] = {"error": detail}
            tqdm.write(f"skipped {path}: {detail}", file=sys.stderr)
            continue
        result = explainer.explain(image)
        manifest["images"][str(path)] = result.save(out, stem, args.colormap, args.alpha)
        top = ", ".join(f"{p.label} {100 * p.probability:.1f}%" for p in result.top(args.top))
        tqdm.write(f"{path}: {top}")
        tqdm.write(f"  {_ood_line(result)}")
    write_manifest(manifest, out / "manifest.json")
    print(f"wrote {len(paths) - failed} explanations and {out / 'manifest.json'}")
    if failed:
        sys.exit(1)


def _figure(args: argparse.Namespace) -> None:
    from ranlens.model.figures import mask_figure

    out = _output_file("--out", args.out, figure=True)
    model, weights = _load(args)
    stats = mask_figure(model, weights, [Path(p) for p in args.images], out, max_pixels=args.max_pixels,
                        reduction=args.reduction)
    for row in stats:
        print(f"{row['image']:<24} {row['module']:<16} {args.reduction} {row['mean_min']:.3f}..{row['mean_max']:.3f}"
              f"  all channels {row['all_min']:.3f}..{row['all_max']:.3f} (std {row['all_std']:.3f})")
    print(f"figure written to {out}{_added_png(args.out, out)}")


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port before the model loads, so a busy port is reported at once and
    in words that name the setting to change."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT does not block
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(f"port {port} on {host} is already in use: choose another with --port or "
                               f"RANLENS_PORT") from exc
        raise CommandError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): check --host/--port or "
                           f"RANLENS_HOST/RANLENS_PORT") from exc
    return sock


def _without_nagle(sock: socket.socket) -> None:
    """TCP_NODELAY on a listening socket, which the connections it accepts inherit.

    uvicorn's workers take the socket as an fd that they open as a Unix socket, so asyncio does not
    set TCP_NODELAY on the TCP connections they accept; each response's body then waited for the
    client's delayed ACK (a lone request took about 60 ms instead of 12 on the development machine).
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _port_setting(given: int | None, setting: int) -> int:
    """--port (range-checked by its type), else RANLENS_PORT, which must be a port too: the socket
    library refuses one outside 0..65535 with an OverflowError."""
    if given is not None:
        return given
    if not 0 <= setting <= 65535:
        raise CommandError(f"RANLENS_PORT={setting} is not a port: give 0..65535 (0: any free port)")
    return setting


def _log_config() -> dict:
    """uvicorn's logging, with the app's own logger beside uvicorn's: its INFO lines (which models each
    process serves) reach the console too, where uvicorn's setup alone showed only warnings."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["ranlens"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from ranlens.app.core.config import get_settings

    if args.workers < 1:
        raise CommandError(f"--workers must be at least 1, not {args.workers}")
    settings = get_settings()
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)  # bound by whoever started us (systemd, a test)
    else:
        sock = _listen(args.host or settings.host, _port_setting(args.port, settings.port))
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
    # the same server options with one process or several; the path prefix belongs to the server
    # (FastAPI deprecated its own root_path)
    options = dict(root_path=settings.root_path, proxy_headers=True, forwarded_allow_ips="127.0.0.1",
                   timeout_graceful_shutdown=settings.shutdown_timeout_s, log_config=_log_config(),
                   limit_concurrency=settings.max_connections)
    only = f" of {settings.arch}" if settings.arch else ""
    workers = f", {args.workers} worker processes" if args.workers > 1 else ""
    print(f"ranlens serving on http://{host}:{port}/ (loading weights {settings.weights}{only}{workers})", flush=True)
    if args.workers > 1:
        # uvicorn's supervisor hands the bound socket to each worker; every worker imports the app, so
        # each loads its own models and runs its own batcher (memory and loading time grow with N)
        _without_nagle(sock)
        uvicorn.run("ranlens.app.main:app", fd=sock.fileno(), workers=args.workers, **options)
        return
    uvicorn.Server(uvicorn.Config("ranlens.app.main:app", **options)).run(sockets=[sock])


def _serve_ray(args: argparse.Namespace) -> None:
    """Deploys the app on a Ray cluster (``ranlens.app.serve_ray``) and returns; the cluster keeps it."""
    from ranlens.app.core.config import get_settings

    try:
        from ranlens.app import serve_ray
    except ImportError as exc:
        raise CommandError(_one_line(exc)) from exc
    if args.down:
        serve_ray.undeploy(args.address)
        print(f"ranlens removed from the Ray cluster at {args.address}")
        return
    settings = get_settings()
    host = args.host or settings.host
    port = _port_setting(args.port, settings.port)
    print(f"deploying {args.replicas} replica(s) to the Ray cluster at {args.address} "
          f"(each loads weights {settings.weights})", flush=True)
    try:
        serve_ray.deploy(settings, args.address, args.replicas, args.replica_cpus, host, port, args.proxy_location)
    except RuntimeError as exc:  # Serve's errors (a replica that cannot start, a cluster too small)
        raise CommandError(f"deployment failed: {_one_line(exc)}") from exc
    shown = f"[{host}]" if ":" in host else host
    print(f"ranlens serving on http://{shown}:{port}{settings.root_path}/ through Ray Serve; "
          f"remove it with: ranlens serve-ray --address {args.address} --down", flush=True)


def _add_weights_args(parser: argparse.ArgumentParser) -> None:
    from ranlens.model.registry import list_models

    parser.add_argument("--arch", choices=list_models(),
                        help=f"architecture whose DEFAULT weights to use (default: {DEFAULT_ARCH}); a weights name "
                        "or manifest given to --weights names its own, and --arch must then agree with it")
    parser.add_argument("--weights", default="DEFAULT", help="weights name, DEFAULT, or a manifest .json")


def _curves(args: argparse.Namespace) -> None:
    """One training-curve figure for a chain of runs (a run and the warm-started runs after it)."""
    from ranlens.model.train import plot_curves

    out = _output_file("--out", args.out, figure=True)
    write_metrics = _output_file("--write-metrics", args.write_metrics) if args.write_metrics else None
    runs: list[dict] = []
    for spec in map(Path, args.runs):
        path = spec / "metrics.json" if spec.is_dir() else spec
        runs.extend(_metrics_runs(path, spec.name))
    combined, restarts, offset = [], [], 0
    for run in runs:
        if combined:
            restarts.append(offset + 0.5)
        combined += [{**record, "epoch": offset + record["epoch"]} for record in run["history"]]
        offset += len(run["history"])
    plot_curves(combined, out, tuple(restarts))
    print(f"wrote {out}: {len(runs)} run(s), {offset} epochs{_added_png(args.out, out)}")
    if write_metrics:
        write_metrics.write_text(json.dumps({"runs": runs}, indent=2))
        print(f"wrote {write_metrics}")


# what each epoch's record needs for the curves
CURVE_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")


def _metrics_runs(path: Path, name: str) -> list[dict]:
    """The runs in a metrics file: a run's own metrics.json (a list of epoch records) holds one, a file
    ``curves --write-metrics`` wrote (``{"runs": [{"name", "history"}, ...]}``) several."""
    what = f"{path} is not a run's metrics.json, a file ranlens curves --write-metrics wrote, or a run folder"
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"{what}: not JSON ({_one_line(exc)})") from exc
    runs = data.get("runs") if isinstance(data, dict) else [{"name": name, "history": data}]
    if not isinstance(runs, list) or not runs:
        raise CommandError(f"{what}: it holds no runs")
    for run in runs:
        history = run.get("history") if isinstance(run, dict) else None
        if not isinstance(history, list) or not history:
            raise CommandError(f"{what}: a run without epoch records")
        for record in history:
            if not isinstance(record, dict) or not all(isinstance(record.get(k), (int, float)) for k in CURVE_KEYS):
                raise CommandError(f"{what}: an epoch record lacks one of {', '.join(CURVE_KEYS)}")
    return runs


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (required, or unset)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or isinstance(action, argparse._StoreConstAction):
            return action.help or ""
        return super()._get_help_string(action)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, ImageError):  # imaging.py words its messages for the web API's clients
        text = text.replace("this server", "ranlens")
    return text


def build_parser() -> argparse.ArgumentParser:
    from ranlens import __version__
    from ranlens.model.render import COLORMAPS
    from ranlens.model.train import TrainConfig

    parser = argparse.ArgumentParser(prog="ranlens", formatter_class=_HelpFormatter,
                                     description="See where a Residual Attention Network looks.")
    parser.add_argument("--version", action="version", version=f"ranlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
        # command_parser: for refusals of option combinations, said as argparse says its own (exit status 2)
        p.set_defaults(func=func, command_parser=p)
        return p

    t = command("train", "train a model; resumes from OUT/last.pt; runs as is under torchrun", _train)
    for f in fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):  # a switch: present means on
            t.add_argument(flag, action=_remembered(argparse._StoreTrueAction), default=f.default, **f.metadata)
        else:
            t.add_argument(flag, action=_remembered(argparse._StoreAction), type=type(f.default), default=f.default,
                           **f.metadata)
    t.add_argument("--resume", metavar="RUN", default="",
                   help="continue the run in folder RUN with the settings it recorded; options given here win "
                        "(--threads, --stop-after, ...; one that would change what the run learns is refused)")

    st = command("status", "where training runs stand: epochs and batches done, last test accuracy, time left "
                 "at the recent pace", _status)
    st.add_argument("runs", nargs="+", metavar="RUN", help="run folders (a training run's --out)")

    e = command("evaluate", "top-1/top-5/per-class accuracy of weights on a data split", _evaluate)
    _add_weights_args(e)
    e.add_argument("--data", required=True, help="DATA/<split>/<class>/* or a folder of class folders")
    e.add_argument("--source", default="folder", choices=["folder", "torchvision"], help="how to read --data")
    e.add_argument("--split", default="test", choices=["train", "test"], help="which split of --data")
    e.add_argument("--dataset", help="name recorded with the metrics (default: the --data path and split)")
    e.add_argument("--confusion", help="also write the confusion matrix as a PNG here")
    e.add_argument("--write-metrics", action="store_true", help="record the result in the weights manifest "
                   "(test split only)")
    e.add_argument("--threads", type=_positive_int, default=2, help="CPU threads for torch")

    o = command("calibrate-ood", "choose the out-of-distribution threshold on the train split and record it in "
                "the weights manifest (knn: and write the bank beside it)", _calibrate_ood)
    _add_weights_args(o)
    o.add_argument("--data", required=True, help="DATA/train/<class>/* and DATA/test/<class>/*")
    o.add_argument("--source", default="folder", choices=["folder", "torchvision"], help="how to read --data")
    o.add_argument("--dataset", help="name recorded with the calibration (default: the --data path)")
    o.add_argument("--tpr", type=_fraction, default=0.95, help="fraction of training images kept in-distribution, "
                   "in (0, 1]")
    o.add_argument("--method", choices=["knn", "energy"], default="knn", help="knn: distance to the k-th nearest "
                   "training image's features (Sun et al. 2022); energy: of the logits (Liu et al. 2020)")
    o.add_argument("--k", type=_positive_int, default=5, help="knn: which nearest neighbour's distance is the score "
                   "(at most --bank-size)")
    o.add_argument("--bank-size", type=_positive_int, default=5000, help="knn: training images whose features are "
                   "shipped, fewer than the train split holds (the rest choose the threshold; k = 5 of 5,000: Sun et "
                   "al.'s k = 50 of 50,000 at a tenth of the data)")
    o.add_argument("--seed", type=int, default=0, help="knn: which training images make the bank")
    o.add_argument("--views", help="knn: the features compared, comma-separated: 'head' (the pooled features the "
                   "classifier reads) and '<module>:mean' or '<module>:std' (that statistic over positions of a "
                   "module's output (1 + M) * T); a picture is flagged when it is unlike the training images in any "
                   "of them (default: head,stage1.module1:std)")
    o.add_argument("--temperature", type=_positive_float, default=1.0, help="energy: temperature T")
    o.add_argument("--examples", nargs="*", default=[], help="also print the scores of these images")
    o.add_argument("--no-test", action="store_true", help="skip the test split (no fraction flagged is recorded)")
    o.add_argument("--dry-run", action="store_true", help="print the calibration, leave the manifest alone")
    o.add_argument("--max-pixels", type=_positive_int, default=40_000_000,
                   help="refuse larger images (decompression bombs)")
    o.add_argument("--threads", type=_positive_int, default=2, help="CPU threads for torch")

    x = command("export", "ship a run's checkpoint as WEIGHTS_DIR/NAME.safetensors with a manifest", _export)
    x.add_argument("run", help="the run folder (ranlens train --out)")
    x.add_argument("--name", required=True, help="weights name, a plain file stem, e.g. attention56_cifar.v9; "
                   "refused if NAME.safetensors or NAME.json is in WEIGHTS_DIR already (see --force)")
    x.add_argument("--epoch", type=int, default=0, help="which epoch's checkpoint; 0 = the last finished one")
    x.add_argument("--weights-dir", default=str(WEIGHTS_DIR), help="where shipped weights live (created if "
                   "missing)")
    x.add_argument("--force", action="store_true", help="replace weights of the same name in WEIGHTS_DIR")

    p = command("explain", "write overlays, raw masks and a manifest for images; print top predictions", _explain)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, WebP, BMP, TIFF)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    _add_weights_args(p)
    p.add_argument("--colormap", default="viridis", choices=COLORMAPS, help="colour map of the overlays")
    p.add_argument("--alpha", type=_opacity, default=0.6, help="opacity of the mask over the picture, 0 to 1")
    p.add_argument("--max-pixels", type=_positive_int, default=40_000_000,
                   help="refuse larger images (decompression bombs)")
    p.add_argument("--top", type=_positive_int, default=3, help="how many predictions to print per image (more "
                   "than the weights have classes prints them all)")
    p.add_argument("--threads", type=_positive_int, default=2, help="CPU threads for torch")

    f = command("figure", "a PNG of every module's mask (channel mean, or what it adds) over some images", _figure)
    f.add_argument("images", nargs="+", help="image files, one row each")
    f.add_argument("--out", required=True, help="the PNG to write")
    _add_weights_args(f)
    f.add_argument("--max-pixels", type=_positive_int, default=40_000_000,
                   help="refuse larger images (decompression bombs)")
    f.add_argument("--reduction", choices=["mean", "added"], default="mean",
                   help="channel mean of M, or added: each position's mean of M * |T|")

    c = command("curves", "training curves of one run or a chain of warm-started runs, as a PNG", _curves)
    c.add_argument("runs", nargs="+", help="run folders or metrics JSON files, oldest first")
    c.add_argument("--out", required=True, help="the PNG to write")
    c.add_argument("--write-metrics", help="also write the runs' per-epoch metrics to this JSON file")

    s = command("serve", "run the web app (other settings from RANLENS_* variables or .env)", _serve)
    s.add_argument("--host", help="address to listen on (default: RANLENS_HOST, else 127.0.0.1)")
    s.add_argument("--port", type=_port, help="port to listen on, 0 for any free one (default: RANLENS_PORT, else "
                   "8000)")
    s.add_argument("--fd", type=int, help="serve on this already-bound socket (systemd, tests) instead of host:port")
    s.add_argument("--workers", type=int, default=1, help="worker processes sharing the socket, each with its "
                   "own models; on a small machine set RANLENS_INFERENCE_WORKERS=1 and RANLENS_TORCH_THREADS to "
                   "cores / workers")

    r = command("serve-ray", "deploy the web app as replicas on a running Ray cluster (ray start --head) and "
                "return; needs pip install 'ranlens[serve]'", _serve_ray)
    r.add_argument("--address", default="auto", help="the cluster: auto (the one started on this machine) "
                   "or HEAD_IP:6379")
    r.add_argument("--replicas", type=int, default=2, help="copies of the app, each with its own models")
    r.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves for each replica")
    r.add_argument("--host", help="address Serve's HTTP proxy listens on, cluster-wide and fixed when Serve "
                   "first starts there (default: RANLENS_HOST, else 127.0.0.1)")
    r.add_argument("--port", type=_port, help="port of Serve's HTTP proxy (default: RANLENS_PORT, else 8000)")
    r.add_argument("--proxy-location", choices=("EveryNode", "HeadOnly"), default="EveryNode",
                   help="Serve's HTTP proxies: on every node that holds a replica (each an entry point, for a "
                   "load balancer in front) or on the head node alone; fixed when Serve first starts")
    r.add_argument("--down", action="store_true", help="remove the app from the cluster instead")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except (CommandError, OSError, WeightsError, ValueError) as exc:
        # ValueError covers bad image bytes (ImageError), unreadable JSON and refused settings
        parser.exit(1, f"ranlens {args.command}: error: {_one_line(exc)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
