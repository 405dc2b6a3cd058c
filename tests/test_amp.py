"""Mixed precision: bf16 autocast trains like float32, and the run records what it used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ranlens.model.train import TrainConfig, resolve_amp, train

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cifar10-test"


def _run(tmp_path: Path, amp: str) -> tuple[list[dict], dict]:
    cfg = TrainConfig(data=str(FIXTURES), out=str(tmp_path / amp), epochs=3, batch_size=10, lr=0.05,
                      warmup=0.0, label_smoothing=0.0, threads=1, amp=amp)
    history = train(cfg)
    return history, json.loads((tmp_path / amp / "config.json").read_text())


def test_bf16_follows_the_float32_loss_curve(tmp_path):
    fp32, fp32_config = _run(tmp_path, "off")
    bf16, bf16_config = _run(tmp_path, "bf16")
    assert fp32_config["amp"] == "off" and bf16_config["amp"] == "bf16"
    losses32 = [h["train_loss"] for h in fp32]
    losses16 = [h["train_loss"] for h in bf16]
    # the same seed, batches and schedule: bf16 rounding may move the curve a little, not change it
    for a, b in zip(losses32, losses16):
        assert abs(a - b) / a < 0.05, (losses32, losses16)
    assert losses16[-1] < losses16[0] and losses32[-1] < losses32[0]
    assert losses32 != losses16  # bf16 really ran: identical curves would mean autocast did nothing


def test_amp_setting_is_checked():
    assert resolve_amp("off") == "off" and resolve_amp("bf16") == "bf16"
    assert resolve_amp("auto") in {"off", "bf16"}
    with pytest.raises(ValueError, match="amp must be"):
        resolve_amp("fp16")


def test_device_setting_is_checked_and_recorded(tmp_path):
    import torch

    from ranlens.model.train import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    cfg = TrainConfig(data=str(FIXTURES), out=str(tmp_path / "run"), epochs=1, batch_size=10, threads=1,
                      device="auto", amp="off", limit_train=10, limit_test=10)
    train(cfg)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    # what the run did, not "auto": a resume elsewhere may move it between devices without refusing
    assert config["device"] == resolve_device("auto") and config["machine"]["device"] == config["device"]
