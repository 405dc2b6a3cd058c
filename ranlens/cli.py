"""The ``ranlens`` command: train, evaluate, export, explain, figure, curves, serve.

It sits above both sides: it uses ``ranlens.model`` and starts ``ranlens.app``; neither imports it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, fields
from pathlib import Path

from ranlens.model.weights import WEIGHTS_DIR, Weights, sha256_of


def _train(args: argparse.Namespace) -> None:
    from ranlens.model.train import TrainConfig, train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    train(cfg)


def _load(args: argparse.Namespace):
    """A model and its weights description from ``--weights`` (name or .json manifest)."""
    from ranlens.model.registry import get_model
    from ranlens.model.weights import resolve_weights

    weights = resolve_weights(args.arch, args.weights)
    return get_model(weights.arch, weights=weights), weights


def _evaluate(args: argparse.Namespace) -> None:
    from ranlens.model.evaluate import evaluate

    import torch

    torch.set_num_threads(args.threads)
    model, weights = _load(args)
    result = evaluate(model, args.data, args.split, weights.mean, weights.std, args.source, weights.classes)
    print(f"{weights.name} on {args.dataset}")
    print(result.report())
    if args.confusion:
        result.save_confusion(Path(args.confusion))
        print(f"confusion matrix written to {args.confusion}")
    if args.write_metrics:
        updated = Weights(**{**weights.__dict__, "metrics": result.metrics(args.dataset)})
        print(f"metrics written to {updated.write_manifest()}")


def _train_command(config: dict) -> str:
    """The ``ranlens train`` line that reproduces a run: every setting that differs from the default."""
    from ranlens.model.train import TrainConfig

    flags = [f"--{f.name.replace('_', '-')} {config[f.name]}" for f in fields(TrainConfig)
             if f.name not in ("out", "data", "threads", "stop_after") and config[f.name] != f.default]
    return " ".join(["ranlens train", *flags])


def _lineage(init: Path) -> dict:
    """What a warm-started run started from: the parent's name, hash and recipe, so the whole
    training behind a checkpoint stays on record."""
    manifest = init.with_suffix(".json")
    if manifest.is_file():
        parent = Weights.from_manifest(manifest)
        return {"from": parent.name, "sha256": parent.sha256, "recipe": parent.recipe}
    return {"from": init.name, "sha256": sha256_of(init) if init.is_file() else None, "recipe": None}


def _export(args: argparse.Namespace) -> None:
    """Copies a run's checkpoint into model/weights/ with a manifest carrying the recipe."""
    from ranlens.model.train import CIFAR_MEAN, CIFAR_STD, TrainConfig
    from ranlens.model.weights import CIFAR10_CLASSES, read_checkpoint

    run = Path(args.run)
    # a run made before a setting existed trained with that setting's default (e.g. no cutout)
    config = {**asdict(TrainConfig()), **json.loads((run / "config.json").read_text())}
    history = json.loads((run / "metrics.json").read_text())
    source = run / f"epoch{args.epoch or len(history):03d}.safetensors"
    read_checkpoint(source, expected_arch=config["arch"])
    target_dir = Path(args.weights_dir)
    target = target_dir / f"{args.name}.safetensors"
    shutil.copyfile(source, target)
    epochs_done = args.epoch or len(history)
    done = history[:epochs_done]
    recipe = {
        **{k: config[k] for k in ("epochs", "batch_size", "lr", "warmup", "momentum", "weight_decay",
                                  "label_smoothing", "cutout", "seed")},
        "epochs_completed": epochs_done,
        "optimizer": "SGD, Nesterov momentum; no weight decay on BN and biases",
        "schedule": "linear warm-up then cosine decay to zero, per batch",
        "augmentation": "random crop 32 with 4-pixel zero padding, horizontal flip"
        + (f", cutout {config['cutout']}x{config['cutout']}" if config["cutout"] else ""),
        "train_data": "CIFAR-10 train split (JPEG q75 copy), 50,000 images",
        "hardware": "2 CPU cores, float32, channels_last",
        "train_wall_hours": round(sum(h["epoch_seconds"] for h in done) / 3600, 2),
        "train_img_per_s": round(sum(h["train_img_per_s"] for h in done) / len(done), 1),
        "command": _train_command(config),
    }
    # a warm-started run adds to its parent's training; v1's manifest predates the total_* keys
    earlier = {}
    if config.get("init"):
        recipe["warm_start"] = _lineage(Path(config["init"]))
        earlier = recipe["warm_start"]["recipe"] or {}
    recipe["total_epochs"] = epochs_done + earlier.get("total_epochs", earlier.get("epochs_completed", 0))
    recipe["total_train_wall_hours"] = round(
        recipe["train_wall_hours"] + earlier.get("total_train_wall_hours", earlier.get("train_wall_hours", 0)), 2)
    weights = Weights(
        name=args.name, arch=config["arch"], file=target.name, sha256=sha256_of(target),
        classes=tuple(config.get("classes", CIFAR10_CLASSES)), input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD, recipe=recipe,
        metrics={"note": "not yet measured: run ranlens evaluate --write-metrics"}, directory=target_dir,
    )
    print(f"wrote {target} and {weights.write_manifest()}")


def _explain(args: argparse.Namespace) -> None:
    """Overlays, raw masks and a JSON manifest for a batch of images."""
    from tqdm import tqdm

    from ranlens.model.explainer import Explainer, write_manifest
    from ranlens.model.imaging import ImageError, decode_image

    import torch

    torch.set_num_threads(args.threads)
    explainer = Explainer.load(args.arch, args.weights)
    out = Path(args.out)
    manifest = {"model": explainer.name, "weights": explainer.weights.name, "images": {}}
    failed = 0
    for path in tqdm(args.images, desc="explaining", unit="img"):
        path = Path(path)
        try:
            image = decode_image(path.read_bytes(), args.max_pixels)
        except (OSError, ImageError) as exc:
            failed += 1
            detail = str(exc)
            manifest["images"][str(path)] = {"error": detail}
            tqdm.write(f"skipped {path}: {detail}")
            continue
        result = explainer.explain(image)
        manifest["images"][str(path)] = result.save(out, path.stem, args.colormap, args.alpha)
    write_manifest(manifest, out / "manifest.json")
    print(f"wrote {len(args.images) - failed} explanations and {out / 'manifest.json'}")
    if failed:
        sys.exit(1)


def _figure(args: argparse.Namespace) -> None:
    from ranlens.model.figures import mask_figure

    model, weights = _load(args)
    stats = mask_figure(model, weights, [Path(p) for p in args.images], Path(args.out))
    for row in stats:
        print(f"{row['image']:<24} {row['module']:<16} channel-mean {row['mean_min']:.3f}..{row['mean_max']:.3f}"
              f"  all channels {row['all_min']:.3f}..{row['all_max']:.3f} (std {row['all_std']:.3f})")
    print(f"figure written to {args.out}")


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from ranlens.app.core.config import get_settings

    settings = get_settings()
    # the path prefix belongs to the server (FastAPI deprecated its own root_path)
    uvicorn.run("ranlens.app.main:app", host=args.host or settings.host, port=args.port or settings.port,
                root_path=settings.root_path, proxy_headers=True, forwarded_allow_ips="127.0.0.1")


def _add_weights_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="attention56_cifar")
    parser.add_argument("--weights", default="DEFAULT", help="weights name, DEFAULT, or a manifest .json")


def _curves(args: argparse.Namespace) -> None:
    """One training-curve figure for a chain of runs (a run and the warm-started runs after it)."""
    from ranlens.model.train import plot_curves

    runs: list[dict] = []
    for spec in map(Path, args.runs):
        path = spec / "metrics.json" if spec.is_dir() else spec
        data = json.loads(path.read_text())
        # a file this command wrote holds several runs; a run's own metrics.json holds one
        runs.extend(data["runs"] if isinstance(data, dict) else [{"name": spec.name, "history": data}])
    combined, restarts, offset = [], [], 0
    for run in runs:
        if combined:
            restarts.append(offset + 0.5)
        combined += [{**record, "epoch": offset + record["epoch"]} for record in run["history"]]
        offset += len(run["history"])
    plot_curves(combined, Path(args.out), tuple(restarts))
    print(f"wrote {args.out}: {len(runs)} run(s), {offset} epochs")
    if args.write_metrics:
        Path(args.write_metrics).write_text(json.dumps({"runs": runs}, indent=2))
        print(f"wrote {args.write_metrics}")


def main(argv: list[str] | None = None) -> None:
    from ranlens import __version__

    parser = argparse.ArgumentParser(prog="ranlens", description="Residual Attention Network: train, evaluate, explain, serve")
    parser.add_argument("--version", action="version", version=f"ranlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    from ranlens.model.train import TrainConfig

    t = sub.add_parser("train", help="train a CIFAR-layout model (resumes from OUT/last.pt)")
    for f in fields(TrainConfig):
        t.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="top-1/top-5/per-class accuracy of a weights file on a split")
    _add_weights_args(e)
    e.add_argument("--data", required=True)
    e.add_argument("--source", default="folder", choices=["folder", "torchvision"])
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--dataset", default="CIFAR-10 test (JPEG q75 copy)", help="name recorded with the metrics")
    e.add_argument("--confusion", help="write the confusion matrix PNG here")
    e.add_argument("--write-metrics", action="store_true", help="record the result in the weights manifest")
    e.add_argument("--threads", type=int, default=2)
    e.set_defaults(func=_evaluate)

    x = sub.add_parser("export", help="ship a run's checkpoint as model/weights/NAME.safetensors + manifest")
    x.add_argument("run")
    x.add_argument("--name", required=True)
    x.add_argument("--epoch", type=int, default=0, help="default: the last finished epoch")
    x.add_argument("--weights-dir", default=str(WEIGHTS_DIR))
    x.set_defaults(func=_export)

    from ranlens.model.render import COLORMAPS

    p = sub.add_parser("explain", help="write overlays, raw masks and a manifest for images")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True)
    _add_weights_args(p)
    p.add_argument("--colormap", default="viridis", choices=COLORMAPS)
    p.add_argument("--alpha", type=float, default=0.6)
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=_explain)

    f = sub.add_parser("figure", help="a PNG of every module's channel-mean mask over some images")
    f.add_argument("images", nargs="+")
    f.add_argument("--out", required=True)
    _add_weights_args(f)
    f.set_defaults(func=_figure)

    c = sub.add_parser("curves", help="training curves of one run or a chain of warm-started runs, as a PNG")
    c.add_argument("runs", nargs="+", help="run folders or metrics JSON files, oldest first")
    c.add_argument("--out", required=True)
    c.add_argument("--write-metrics", help="also write the runs' per-epoch metrics to this JSON file")
    c.set_defaults(func=_curves)

    s = sub.add_parser("serve", help="run the web app (settings from RANLENS_* variables)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=_serve)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
