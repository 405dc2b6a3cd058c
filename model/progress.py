"""Where a training run stands: epochs and batches done, its last figures, and the time it still needs.

Read from the files a run keeps (``config.json``, ``metrics.json``, ``last.pt``), so it works on a run
that is going, stopped, or finished, from any process, without touching the run.
"""

from __future__ import annotations

import json
import pickle
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["RunProgress", "run_progress"]

# epochs whose median duration estimates the time left: recent enough to follow a change of machine
# or load, enough of them that one slow epoch does not swing it
RECENT_EPOCHS = 5


@dataclass(frozen=True)
class RunProgress:
    run: Path
    arch: str
    epochs: int  # the length of the schedule
    epochs_done: int
    steps_per_epoch: int
    steps_done: int  # batches of epoch ``epochs_done + 1`` already trained and saved (a save inside it)
    swa: int  # the last ``swa`` epochs average the weights
    test_acc: float | None  # after the last finished epoch, on ``test_images`` images
    test_images: int | None  # None where the run did not record it
    epoch_seconds: float | None  # median of the last RECENT_EPOCHS epochs

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.epochs

    @property
    def epochs_left(self) -> float:
        return max(0.0, self.epochs - self.epochs_done - self.steps_done / self.steps_per_epoch)

    @property
    def seconds_left(self) -> float | None:
        """At the recent pace; None before the first epoch has finished."""
        return None if self.epoch_seconds is None else self.epochs_left * self.epoch_seconds

    def summary(self) -> str:
        """One line, e.g. ``runs/a56: attention56_cifar epoch 15/150 + 120/390 batches, test 74.20%
        (2,000 images), 8.1 min an epoch, about 18.2 h left``."""
        where = f"epoch {self.epochs_done}/{self.epochs}"
        if self.steps_done:
            where += f" + {self.steps_done}/{self.steps_per_epoch} batches"
        parts = [f"{self.run}: {self.arch} {where}"]
        if self.test_acc is not None:
            count = f" ({self.test_images:,} images)" if self.test_images else ""
            parts.append(f"test {100 * self.test_acc:.2f}%{count}")
        if self.swa and self.epochs_done >= self.epochs - self.swa:
            parts.append(f"averaging since epoch {self.epochs - self.swa + 1}")
        if self.finished:
            parts.append("finished")
        elif self.epoch_seconds is not None:
            parts.append(f"{self.epoch_seconds / 60:.1f} min an epoch, about {_duration(self.seconds_left)} left")
        return ", ".join(parts)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def run_progress(run: str | Path) -> RunProgress:
    """The progress of the run in folder ``run``; FileNotFoundError where it holds no run."""
    run = Path(run)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run} holds no training run: it has no config.json (a run writes one when it starts)")
    metrics_path, state_path = run / "metrics.json", run / "last.pt"
    reading = config_path
    try:
        config = json.loads(config_path.read_text())
        reading = metrics_path
        history = json.loads(metrics_path.read_text()) if metrics_path.is_file() else []
        reading = state_path
        state = torch.load(state_path, weights_only=True, map_location="cpu") if state_path.is_file() else {}
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        # a damaged file is named, in one line, and `ranlens status` goes on to the other runs
        raise ValueError(f"{reading}: cannot read it ({type(exc).__name__}: {exc})") from None
    batch = config.get("batch_size", 128)
    recent = [h["epoch_seconds"] for h in history[-RECENT_EPOCHS:] if "epoch_seconds" in h]
    return RunProgress(
        run=run,
        arch=config.get("arch", "?"),
        epochs=config["epochs"],
        epochs_done=len(history),
        steps_per_epoch=max(1, config.get("train_images", batch) // batch),
        steps_done=state.get("steps", 0) if state.get("epoch") == len(history) else 0,
        swa=config.get("swa", 0),
        test_acc=history[-1]["test_acc"] if history else None,
        test_images=config.get("test_images") or config.get("limit_test") or None,
        epoch_seconds=statistics.median(recent) if recent else None,
    )
