"""The ranlens command line, run for real in a subprocess."""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ranlens.cli import build_parser
from ranlens.model.train import TrainConfig
from ranlens.model.weights import DEFAULT_WEIGHTS, WEIGHTS_DIR, get_weights

DEFAULT = DEFAULT_WEIGHTS["attention56_cifar"]
# a shipped checkpoint that is not the default: the default's parent stays beside it
PARENT = get_weights("attention56_cifar", DEFAULT).recipe["warm_start"]["from"]

from .conftest import CIFAR_FIXTURES, PHOTOS, RANLENS, running_server, stall_upload, stop_server

COMMANDS = {"train", "status", "evaluate", "calibrate-ood", "export", "explain", "figure", "curves", "serve",
            "serve-ray"}


def ranlens(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ranlens", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Failed with one line on stderr that says what is wrong, and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_explain_writes_overlays_masks_and_manifest(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = tmp_path / "new" / "out"
    result = ranlens("explain", str(PHOTOS / "chelsea.jpg"), str(PHOTOS / "rocket.jpg"), str(bad),
                     "--out", str(out), "--colormap", "inferno")
    assert result.returncode == 1, result.stderr  # one image failed, and says so
    assert f"skipped {bad}: " in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "attention56_cifar" and manifest["weights"] == DEFAULT
    assert "corrupt" in manifest["images"][str(bad)]["error"]
    entry = manifest["images"][str(PHOTOS / "chelsea.jpg")]
    assert [m["module"] for m in entry["attention"]] == ["stage1.module1", "stage2.module1", "stage3.module1"]
    for m in entry["attention"]:
        mask = np.load(out / m["mask"])
        assert mask.shape == (m["channels"], *m["shape"]) and 0 < mask.min() and mask.max() < 1
        assert abs(float(mask.mean(0).max()) - m["max"]) < 1e-6
        assert Image.open(out / m["overlay"]).size == (256, 256)
    assert len(entry["predictions"]) == 5
    # each image's top predictions are printed, as in the manifest
    for photo in ("chelsea.jpg", "rocket.jpg"):
        top = manifest["images"][str(PHOTOS / photo)]["predictions"][:3]
        line = f"{PHOTOS / photo}: " + ", ".join(f"{p['label']} {100 * p['probability']:.1f}%" for p in top)
        assert line in result.stdout.splitlines(), result.stdout


def test_explain_keeps_inputs_with_the_same_name_apart(tmp_path):
    for folder, photo in (("a", "chelsea.jpg"), ("b", "rocket.jpg")):
        (tmp_path / folder).mkdir()
        shutil.copyfile(PHOTOS / photo, tmp_path / folder / "photo.jpg")
    out = tmp_path / "out"
    result = ranlens("explain", str(tmp_path / "a" / "photo.jpg"), str(tmp_path / "b" / "photo.jpg"),
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    images = json.loads((out / "manifest.json").read_text())["images"]
    a, b = images[str(tmp_path / "a" / "photo.jpg")], images[str(tmp_path / "b" / "photo.jpg")]
    assert a["input"] != b["input"]
    assert not {m["mask"] for m in a["attention"]} & {m["mask"] for m in b["attention"]}
    # each entry's files are its own image's: the crops differ and so do the predictions
    assert not np.array_equal(np.asarray(Image.open(out / a["input"])), np.asarray(Image.open(out / b["input"])))
    assert a["predictions"] != b["predictions"]


def test_explain_creates_its_output_folder_even_when_every_image_fails(tmp_path):
    out = tmp_path / "deep" / "er"
    result = ranlens("explain", str(tmp_path / "missing.jpg"), "--out", str(out))
    assert result.returncode == 1
    assert result.stderr.strip() == f"skipped {tmp_path / 'missing.jpg'}: No such file or directory"
    assert json.loads((out / "manifest.json").read_text())["images"][str(tmp_path / "missing.jpg")]["error"]


def test_figure_command(tmp_path):
    result = ranlens("figure", str(PHOTOS / "coffee.jpg"), "--out", str(tmp_path / "fig.png"))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("coffee.jpg")]
    assert [row[1] for row in rows] == ["stage1.module1", "stage2.module1", "stage3.module1"]
    assert Image.open(tmp_path / "fig.png").size[0] > 500


def test_figure_decodes_and_preprocesses_as_the_app(tmp_path):
    """Transparency is composited on white as for uploads, and the masks are the app's own."""
    from ranlens.model import get_model, get_weights
    from ranlens.model.explainer import Explainer
    from ranlens.model.figures import mask_figure
    from ranlens.model.imaging import decode_image

    rgb = np.asarray(Image.open(PHOTOS / "chelsea.jpg").convert("RGB").resize((64, 48))).copy()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :24] = 0
    hidden = rgb.copy()
    hidden[:, :24] = 0  # black under the transparent part: a plain convert("RGB") would show it
    Image.fromarray(np.dstack([hidden, alpha]), "RGBA").save(tmp_path / "transparent.png")
    on_white = rgb.copy()
    on_white[:, :24] = 255
    Image.fromarray(on_white).save(tmp_path / "white.png")

    weights = get_weights("attention56_cifar", "DEFAULT")
    model = get_model("attention56_cifar", weights=weights)
    stats = {name: mask_figure(model, weights, [tmp_path / name], tmp_path / f"{name}.fig.png")
             for name in ("transparent.png", "white.png")}
    strip = [{k: v for k, v in row.items() if k != "image"} for row in stats["transparent.png"]]
    assert strip == [{k: v for k, v in row.items() if k != "image"} for row in stats["white.png"]]
    app_view = Explainer(model, weights).explain(decode_image((tmp_path / "transparent.png").read_bytes(), 10**6))
    for row, attention in zip(stats["transparent.png"], app_view.attention, strict=True):
        assert row["module"] == attention.module
        assert row["mean_max"] == pytest.approx(float(attention.reduced("mean").max()), abs=1e-5)
        assert row["mean_min"] == pytest.approx(float(attention.reduced("mean").min()), abs=1e-5)


def test_evaluate_on_the_committed_fixtures(tmp_path):
    # a folder that does not exist yet and a name without an extension: made, and .png added (said)
    confusion = tmp_path / "new" / "deeper" / "confusion"
    result = ranlens("evaluate", "--data", str(CIFAR_FIXTURES), "--confusion", str(confusion))
    assert result.returncode == 0, result.stderr
    assert f"confusion matrix written to {confusion}.png (.png added" in result.stdout, result.stdout
    assert not confusion.exists()
    lines = result.stdout.splitlines()
    assert lines[0] == f"{DEFAULT} on {CIFAR_FIXTURES} (test split)"
    summary = re.fullmatch(r"test: (\d+) images  top-1 ([\d.]+)%  top-5 ([\d.]+)%", lines[1])
    assert summary, lines[1]
    images, top1, top5 = int(summary[1]), float(summary[2]), float(summary[3])
    # 30 images, three per class, on a model with 90.9% top-1 on the whole test split
    assert images == 30 and 70 <= top1 <= top5 <= 100 and top5 >= 90
    per_class = [line.split() for line in lines[2:12]]
    assert [row[0] for row in per_class] == sorted(p.name for p in CIFAR_FIXTURES.iterdir() if p.is_dir())
    assert sum(float(row[1].rstrip("%")) for row in per_class) / 10 == pytest.approx(top1, abs=0.01)
    assert Image.open(tmp_path / "new" / "deeper" / "confusion.png").size[0] > 400


def test_version_from_the_script_and_the_module():
    expected = f"ranlens {version('ranlens')}"
    for command in ([RANLENS, "--version"], [sys.executable, "-m", "ranlens", "--version"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stdout.strip() == expected, result


def test_help_lists_every_command():
    result = subprocess.run([RANLENS, "--help"], capture_output=True, text=True, timeout=120)
    # the commands section, not the description, must list each command
    listed = {m[1] for m in re.finditer(r"^ {4}([\w-]+)(?: |$)", result.stdout, re.M)}
    assert listed == COMMANDS, result.stdout


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_has_help_showing_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping inside a path
    commands = _subcommands()
    assert set(commands) == COMMANDS
    for name, parser in commands.items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = "/".join(action.option_strings) or action.dest
            assert action.help, f"{name} {label} has no help"
            # a flag's default is "off", and an option without a default says in its help what it falls back to
            if action.option_strings and action.nargs != 0 and not action.required and action.default is not None:
                shown = f"(default: {action.default})"
                assert shown in text, f"{name} {label}: {shown} not in help"


@pytest.mark.parametrize("case", ["evaluate-data", "export-run", "figure-image", "curves-file", "weights-json",
                                  "weights-unreadable", "weights-name", "train-data"])
def test_missing_or_unreadable_files_give_one_line(tmp_path, case):
    missing = tmp_path / "missing"
    junk = tmp_path / "junk.json"
    junk.write_text("{ not json")
    args, needles = {
        "evaluate-data": (["evaluate", "--data", str(missing)], [str(missing), "No such file or directory"]),
        "export-run": (["export", str(missing), "--name", "x"], [str(missing / "config.json"), "No such file"]),
        "figure-image": (["figure", str(missing), "--out", str(tmp_path / "f.png")], [str(missing)]),
        "curves-file": (["curves", str(missing), "--out", str(tmp_path / "c.png")], [str(missing)]),
        "weights-json": (["figure", str(PHOTOS / "coffee.jpg"), "--out", str(tmp_path / "f.png"),
                          "--weights", str(tmp_path / "w.json")], [str(tmp_path / "w.json"), "not found"]),
        "weights-unreadable": (["evaluate", "--data", str(CIFAR_FIXTURES), "--weights", str(junk)],
                               [f"weights manifest {junk} is not JSON: Expecting"]),
        "weights-name": (["evaluate", "--data", str(CIFAR_FIXTURES), "--weights", "nope.v1"],
                         ["unknown weights 'nope.v1'", DEFAULT]),
        "train-data": (["train", "--data", str(missing), "--out", str(tmp_path / "run"), "--amp", "off"],
                       [str(missing)]),
    }[case]
    line = assert_one_line_error(ranlens(*args), *needles)
    assert line.startswith(f"ranlens {args[0]}: error: ")


def test_figure_refuses_a_corrupt_image_in_one_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    good = PHOTOS / "coffee.jpg"
    assert_one_line_error(ranlens("figure", str(good), str(bad), "--out", str(tmp_path / "f.png")),
                          f"ranlens figure: error: {bad}: ", "corrupt")
    assert not (tmp_path / "f.png").exists()


def test_resume_with_a_changed_setting_is_one_line(tmp_path):
    """The refusal names the setting, the old and the new value; nothing is trained."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": asdict(TrainConfig(out=str(run), amp="off"))}, run / "last.pt")
    result = ranlens("train", "--out", str(run), "--amp", "off", "--warmup", "0.3")
    assert_one_line_error(result, "warmup=0.15", "warmup=0.3")


@pytest.mark.parametrize("how", ["--port", "RANLENS_PORT"])
def test_serve_on_a_busy_port_says_which_setting_to_change(how):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = ranlens("serve", "--port", port) if how == "--port" else ranlens("serve", RANLENS_PORT=port)
    assert_one_line_error(result, f"port {port} on 127.0.0.1 is already in use", "--port", "RANLENS_PORT")


def readyz(url: str) -> dict:
    with urllib.request.urlopen(url + "readyz", timeout=30) as r:
        return json.loads(r.read())


def test_serve_loads_weights_named_in_the_environment(tmp_path):
    assert PARENT != DEFAULT
    with running_server([RANLENS, "serve"], RANLENS_WEIGHTS=PARENT) as url:
        assert readyz(url)["weights"] == PARENT
    # by a manifest's path: a copy under another name, outside the shipped folder
    manifest = json.loads((WEIGHTS_DIR / f"{PARENT}.json").read_text())
    shutil.copyfile(WEIGHTS_DIR / manifest["file"], tmp_path / "copy.safetensors")
    if "bank" in manifest.get("ood", {}):  # a knn calibration's bank of features travels beside the weights
        shutil.copyfile(WEIGHTS_DIR / manifest["ood"]["bank"], tmp_path / manifest["ood"]["bank"])
    (tmp_path / "copy.json").write_text(json.dumps({**manifest, "name": "copied.v4", "file": "copy.safetensors"}))
    with running_server([RANLENS, "serve"], RANLENS_WEIGHTS=str(tmp_path / "copy.json")) as url:
        assert readyz(url) == {"status": "ready", "model": "attention56_cifar", "weights": "copied.v4",
                               "models": ["copied.v4"]}


def test_serve_stops_on_sigterm_while_a_client_stalls_mid_upload():
    """uvicorn waits for open requests before it exits, and one whose client stopped sending its
    body never ends: ``RANLENS_SHUTDOWN_TIMEOUT_S`` bounds that wait, so a restart cannot hang."""
    with socket.socket() as stalled:
        with running_server([RANLENS, "serve"], stop_timeout=20, RANLENS_ARCH="attention56_cifar",
                            RANLENS_TRACE="false", RANLENS_SHUTDOWN_TIMEOUT_S="2") as url:
            stall_upload(stalled, url)
        # leaving the block sent SIGTERM and waited up to 20 s: a hung shutdown fails there with the log
        answer = b""
        while chunk := stalled.recv(65536):
            answer += chunk
    # the cancelled request is answered as such, not as uvicorn's "Internal Server Error" after a traceback
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer
    assert b"content-type: application/problem+json" in head.lower() and b"retry-after: 1" in head.lower()
    assert json.loads(body)["detail"] == "the server stopped before this request finished; send it again"


def test_serve_answers_a_stalled_upload_408_and_bounds_its_connections():
    """A client that sends its body a byte now and then held a connection and its bytes for ever: the
    body has ``RANLENS_BODY_TIMEOUT_S`` to arrive. And connections are bounded
    when set (``RANLENS_MAX_CONNECTIONS``, uvicorn's limit_concurrency, counting the one asking): a
    request beyond is answered 503 at once, and served again once a connection closes."""
    def healthz(url: str) -> int:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    with running_server([RANLENS, "serve"], RANLENS_ARCH="attention56_cifar", RANLENS_TRACE="false",
                        RANLENS_BODY_TIMEOUT_S="1", RANLENS_MAX_CONNECTIONS="3") as url:
        with socket.socket() as stalled:
            stall_upload(stalled, url)
            answer = b""
            while chunk := stalled.recv(65536):  # the server closes the connection after its answer
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert b"content-type: application/problem+json" in head.lower() and b"connection: close" in head.lower()
        assert "did not arrive within 1 s" in json.loads(body)["detail"]

        where = urllib.parse.urlsplit(url)
        with socket.create_connection((where.hostname, where.port)) as idle:
            assert healthz(url) == 200  # one idle connection and the one asking: within 3
            with socket.create_connection((where.hostname, where.port)):
                time.sleep(0.5)  # the server has taken the connection in
                assert healthz(url) == 503
            time.sleep(0.5)
            assert healthz(url) == 200
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert idle.recv(64).startswith(b"HTTP/1.1 200 ")


def test_serve_behind_a_path_prefix():
    with running_server([sys.executable, "-m", "ranlens", "serve"], RANLENS_ROOT_PATH="/ranlens") as url:
        def get(path: str) -> tuple[int, bytes]:
            with urllib.request.urlopen(url + path, timeout=30) as r:
                return r.status, r.read()

        # as from a proxy that strips the prefix: routes answer, and links the browser follows carry it
        assert readyz(url)["weights"] == DEFAULT
        assert get("static/js/main.js")[0] == 200
        assert json.loads(get("openapi.json")[1])["servers"] == [{"url": "/ranlens"}]
        # the docs page links its schema and assets relatively, so behind the proxy they resolve under the prefix
        docs = get("docs")[1].decode()
        assert 'data-openapi="openapi.json"' in docs and 'src="docs/assets/swagger-ui-bundle.js"' in docs
        assert get("docs/assets/swagger-ui-bundle.js")[0] == 200
        assert b'src="static/js/main.js"' in get("")[1]


@pytest.mark.parametrize("given,kept", [("", ""), ("/ranlens", "/ranlens"), ("/ranlens/", "/ranlens"), ("/", "")])
def test_the_path_prefix_is_normalised(given, kept):
    from ranlens.app.core.config import Settings

    assert Settings(root_path=given).root_path == kept


def test_a_path_prefix_without_a_slash_is_refused_in_one_line():
    result = subprocess.run([RANLENS, "serve"], env={**os.environ, "RANLENS_ROOT_PATH": "ranlens"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "a path prefix starts with '/', e.g. '/ranlens'" in result.stderr.strip().splitlines()[-1], result.stderr


# Arguments and paths checked before the work: each test runs the real command


def assert_refused_argument(result: subprocess.CompletedProcess, command: str, option: str, *needles: str) -> None:
    """argparse refused the value: exit status 2, its usage, then one error line naming the option."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ranlens {command}: error: argument {option}: "), last
    for needle in needles:
        assert needle in last, last


def assert_error_after_progress(result: subprocess.CompletedProcess, *needles: str) -> str:
    """As ``assert_one_line_error`` for a command that failed while reading data: the progress bar it
    drew on stderr comes first, the error's one line last."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last
    return last


# A real run, as small as ``ranlens train`` allows in seconds: two epochs (a finished run, and curves with
# more than one point) of two steps each, on 20 of the committed CIFAR-10 fixtures, tested on 10 of them.
RUN_EPOCHS = 2
RUN_OPTIONS = ["--epochs", str(RUN_EPOCHS), "--batch-size", "10", "--limit-train", "20", "--limit-test", "10",
               "--threads", "1", "--amp", "off"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """The folder ``ranlens train`` leaves after a finished run (config.json, metrics.json, last.pt with
    the model and optimizer state, a checkpoint per epoch, curves.png), trained once per module on
    DATA/train and DATA/test, both the committed fixtures; tests change copies of it (``finished_run``)."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / split).symlink_to(CIFAR_FIXTURES, target_is_directory=True)
    result = ranlens("train", "--data", str(data), "--out", str(root / "run"), *RUN_OPTIONS)
    assert result.returncode == 0, result.stderr[-2000:]
    history = json.loads((root / "run" / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, RUN_EPOCHS + 1))
    return root / "run"


@pytest.fixture
def finished_run(trained_run, tmp_path) -> Path:
    """This test's own copy of the trained run."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def test_export_refuses_to_replace_weights_unless_forced(tmp_path, finished_run):
    run, weights = finished_run, tmp_path / "new" / "weights"
    assert ranlens("export", str(run), "--name", "mine.v1", "--weights-dir", str(weights)).returncode == 0
    shipped = {p.name: p.read_bytes() for p in weights.iterdir()}
    assert set(shipped) == {"mine.v1.safetensors", "mine.v1.json"}
    assert_one_line_error(ranlens("export", str(run), "--name", "mine.v1", "--weights-dir", str(weights)),
                          f"{weights / 'mine.v1.safetensors'} already exists", "--force")
    (weights / "mine.v1.safetensors").unlink()  # a manifest alone is somebody's weights too
    assert_one_line_error(ranlens("export", str(run), "--name", "mine.v1", "--weights-dir", str(weights)),
                          f"{weights / 'mine.v1.json'} already exists")
    assert (weights / "mine.v1.json").read_bytes() == shipped["mine.v1.json"]
    forced = ranlens("export", str(run), "--name", "mine.v1", "--weights-dir", str(weights), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (weights / "mine.v1.safetensors").read_bytes() == shipped["mine.v1.safetensors"]


def test_export_refuses_a_shipped_name_by_default():
    """The README's export example once overwrote the default's parent. The run is missing: had the name
    been let through, the error would be about the run, and nothing could be written."""
    for name in (PARENT, DEFAULT):
        assert_one_line_error(ranlens("export", "/nonexistent/run", "--name", name),
                              f"{WEIGHTS_DIR / name}.safetensors already exists")


@pytest.mark.parametrize("name", ["", "../escape", "sub/name", "..", "a..b", ".hidden", "x.safetensors", "x.json",
                                  "/abs/name"])
def test_export_refuses_a_name_that_is_not_a_plain_stem(tmp_path, name):
    result = ranlens("export", str(tmp_path / "missing"), "--name", name, "--weights-dir", str(tmp_path / "w"))
    assert_one_line_error(result, f"--name {name!r} is not a weights name", "attention56_cifar.v9")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["explain", "evaluate", "calibrate-ood"])
@pytest.mark.parametrize("threads", ["0", "-2"])
def test_threads_below_one_are_refused(tmp_path, command, threads):
    args = {"explain": [str(PHOTOS / "coffee.jpg"), "--out", str(tmp_path / "out")],
            "evaluate": ["--data", str(CIFAR_FIXTURES)], "calibrate-ood": ["--data", str(CIFAR_FIXTURES)]}[command]
    assert_refused_argument(ranlens(command, *args, "--threads", threads), command, "--threads", ">= 1")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("port", ["99999", "-1", "65536", "http"])
def test_serve_refuses_a_port_out_of_range(port):
    assert_refused_argument(ranlens("serve", "--port", port), "serve", "--port", "0..65535")


def test_serve_refuses_a_port_out_of_range_from_the_environment():
    assert_one_line_error(ranlens("serve", RANLENS_PORT="99999"), "RANLENS_PORT=99999 is not a port", "0..65535")


def test_serve_on_port_0_listens_on_a_free_port():
    server = subprocess.Popen([sys.executable, "-m", "ranlens", "serve", "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    out = b""
    try:
        # its first line, printed once the socket is bound, before the models load: read with a
        # deadline, so a server that prints nothing fails the test instead of hanging it
        with selectors.DefaultSelector() as selector:
            selector.register(server.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 120
            while b"\n" not in out and (left := deadline - time.monotonic()) > 0 and selector.select(left):
                chunk = os.read(server.stdout.fileno(), 4096)
                if not chunk:  # the server exited
                    break
                out += chunk
    finally:
        stop_server(server, lambda: out.decode(errors="replace"))
        server.stdout.close()
    first = out.decode(errors="replace").partition("\n")[0]
    found = re.match(r"ranlens serving on http://127\.0\.0\.1:(\d+)/", first)
    assert found and int(found[1]) > 0, out


@pytest.mark.parametrize("option,value,message", [
    ("--batch-size", "0", "--batch-size must be at least 1, got 0"),
    ("--batch-size", "-4", "--batch-size must be at least 1, got -4"),
    ("--epochs", "0", "--epochs must be at least 1, got 0"),
    ("--warmup", "1", "--warmup must be a fraction in [0, 1), got 1.0"),
    ("--warmup", "-0.1", "--warmup must be a fraction in [0, 1)"),
    ("--lr", "0", "--lr must be positive, got 0.0"),
    ("--lr", "nan", "--lr must be positive, got nan"),
    ("--momentum", "0", "--momentum must be in (0, 1)"),
    ("--limit-train", "-1", "--limit-train must be 0 (all) or more, got -1"),
    ("--limit-test", "-1", "--limit-test must be 0 (all) or more, got -1"),
    ("--stop-after", "-1", "--stop-after must be 0 (run to the end) or more, got -1"),
    ("--threads", "0", "--threads must be at least 1, got 0"),
    ("--accumulate", "0", "--accumulate must be at least 1, got 0"),
    ("--cutout", "-8", "--cutout must be 0 (off) or more, got -8"),
])
def test_train_refuses_settings_no_run_can_use(tmp_path, option, value, message):
    """Refused before the data is read or the run folder made (--batch-size 0 was a ZeroDivisionError
    after decoding the data set; --data here does not even exist)."""
    run = tmp_path / "run"
    assert_one_line_error(ranlens("train", "--data", str(tmp_path / "nodata"), "--out", str(run), option, value),
                          f"ranlens train: error: {message}")
    assert not run.exists()


@pytest.mark.parametrize("option,value", [("--stop-after", "-1"), ("--threads", "0")])
def test_train_resume_refuses_settings_no_run_can_use(finished_run, option, value):
    run = finished_run
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert_one_line_error(ranlens("train", "--resume", str(run), option, value), f"{option} must be")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_train_resume_of_a_finished_run_says_so(finished_run):
    run = finished_run
    data = json.loads((run / "config.json").read_text())["data"]
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    # --resume, and the command that made the run again (its settings, into the same folder)
    for args in (["--resume", str(run)], ["--out", str(run), "--data", data, *RUN_OPTIONS]):
        result = ranlens("train", *args)
        assert result.returncode == 0, result.stderr
        assert (f"{run} has finished: all {RUN_EPOCHS} epochs are done, nothing to train"
                in result.stdout), result.stdout
        assert "resuming" not in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing trained or rewritten


@pytest.mark.parametrize("command", ["train", "calibrate-ood"])
def test_train_and_calibrate_ood_need_train_and_test_folders(tmp_path, command):
    """A folder of class folders would be read as both splits: the run tested on its training images."""
    extra = ["--out", str(tmp_path / "run")] if command == "train" else []
    assert_one_line_error(ranlens(command, "--data", str(CIFAR_FIXTURES), *extra),
                          f"--data {CIFAR_FIXTURES} has no train/ and no test/ folder", "DATA/train/<class>/*")
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "train" / "cat").symlink_to(CIFAR_FIXTURES / "cat", target_is_directory=True)
    assert_one_line_error(ranlens(command, "--data", str(tmp_path / "data"), *extra),
                          f"--data {tmp_path / 'data'} has no test/ folder")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def corrupt_data(tmp_path):
    """DATA/train and DATA/test of four and one corrupt JPEGs: scoring it fails at once, naming a file, so
    an error about an option shows it was checked before any scoring."""
    for split, count in (("train", 4), ("test", 1)):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
        for i in range(count):
            (tmp_path / "data" / split / "cat" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return tmp_path / "data"


@pytest.mark.parametrize("option,value,needle", [
    ("--tpr", "0", "(0, 1]"), ("--tpr", "1.5", "(0, 1]"), ("--tpr", "nan", "(0, 1]"), ("--k", "0", ">= 1"),
    ("--bank-size", "0", ">= 1"), ("--bank-size", "-5", ">= 1"), ("--temperature", "0", "> 0"),
    ("--temperature", "-1", "> 0"),
])
def test_calibrate_ood_refuses_options_out_of_range(corrupt_data, option, value, needle):
    assert_refused_argument(ranlens("calibrate-ood", "--data", str(corrupt_data), option, value), "calibrate-ood",
                            option, needle)


def test_calibrate_ood_checks_k_and_the_bank_against_the_data_before_scoring(corrupt_data):
    assert_one_line_error(ranlens("calibrate-ood", "--data", str(corrupt_data), "--k", "6", "--bank-size", "5"),
                          "--k 6 is more than the --bank-size 5")
    assert_one_line_error(ranlens("calibrate-ood", "--data", str(corrupt_data), "--bank-size", "4", "--k", "2"),
                          f"--bank-size 4 leaves no training images to calibrate on: {corrupt_data / 'train'} has 4")
    # within range, the scoring starts and meets the corrupt file, which is named
    assert_error_after_progress(ranlens("calibrate-ood", "--data", str(corrupt_data), "--bank-size", "3", "--k", "2",
                                        "--no-test"), f"error: {corrupt_data / 'train' / 'cat' / '0.jpg'}: ", "corrupt")


@pytest.mark.parametrize("top", ["0", "-1"])
def test_explain_refuses_top_below_one(tmp_path, top):
    result = ranlens("explain", str(PHOTOS / "coffee.jpg"), "--out", str(tmp_path / "o"), "--top", top)
    assert_refused_argument(result, "explain", "--top", ">= 1")


@pytest.mark.parametrize("alpha", ["1.5", "-0.1", "nan"])
def test_explain_refuses_an_opacity_outside_0_to_1_before_writing_anything(tmp_path, alpha):
    result = ranlens("explain", str(PHOTOS / "coffee.jpg"), "--out", str(tmp_path / "o"), "--alpha", alpha)
    assert_refused_argument(result, "explain", "--alpha", "[0, 1]")
    assert not (tmp_path / "o").exists()


def test_explain_top_above_the_class_count_prints_every_class(tmp_path):
    result = ranlens("explain", str(PHOTOS / "coffee.jpg"), "--out", str(tmp_path / "o"), "--top", "25")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(f"{PHOTOS / 'coffee.jpg'}: ")]
    assert len(line.split(", ")) == 10, line


@pytest.mark.parametrize("content,problem", [
    (b"# ranlens\n\nnot JSON at all\n", "not JSON"),
    (b"\xff\xfe\x00binary", "not JSON"),
    (b'{"other": 1}', "it holds no runs"),
    (b'{"runs": [{"name": "a"}]}', "a run without epoch records"),
    (b"[1, 2]", "an epoch record lacks one of epoch, train_loss"),
    (b'[{"epoch": 1, "train_loss": 1.0}]', "an epoch record lacks one of"),
])
def test_curves_names_a_file_that_is_not_metrics(tmp_path, content, problem):
    bad = tmp_path / "README.md"
    bad.write_bytes(content)
    assert_one_line_error(ranlens("curves", str(bad), "--out", str(tmp_path / "c.png")),
                          f"{bad} is not a run's metrics.json, a file ranlens curves --write-metrics wrote, or a run "
                          f"folder: {problem}")
    assert not (tmp_path / "c.png").exists()


def test_curves_makes_its_output_folders_first(tmp_path, finished_run):
    run = finished_run
    out, written = tmp_path / "a" / "b" / "curves", tmp_path / "c" / "d" / "metrics.json"
    result = ranlens("curves", str(run), "--out", str(out), "--write-metrics", str(written))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}.png: 1 run(s), {RUN_EPOCHS} epochs (.png added" in result.stdout, result.stdout
    assert Image.open(f"{out}.png").size[0] > 400
    history = json.loads(written.read_text())["runs"][0]["history"]
    assert history == json.loads((run / "metrics.json").read_text()) and len(history) == RUN_EPOCHS


@pytest.mark.parametrize("command", ["figure", "curves", "evaluate"])
def test_a_folder_or_an_unknown_format_as_figure_output_is_refused_before_the_work(tmp_path, command):
    for out, needle in ((tmp_path, f"{tmp_path} is a folder"), (tmp_path / "masks.v2", "cannot write a .v2 figure"),
                        (Path("/proc/masks.png"), "cannot write a file in /proc")):  # even root cannot
        option = "--confusion" if command == "evaluate" else "--out"
        args = {"figure": [str(PHOTOS / "coffee.jpg")], "curves": [str(tmp_path / "missing")],
                "evaluate": ["--data", str(tmp_path / "missing")]}[command]
        assert_one_line_error(ranlens(command, *args, option, str(out)), f"{option} {out}", needle)


def test_figure_without_an_extension_writes_and_names_a_png(tmp_path):
    out = tmp_path / "new" / "masks"
    result = ranlens("figure", str(PHOTOS / "coffee.jpg"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last == f"figure written to {out}.png (.png added: the name given had no extension)", result.stdout
    assert Image.open(f"{out}.png").size[0] > 500 and not out.exists()


@pytest.mark.parametrize("content,needle", [(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "corrupt"),
                                            (b"hello, I am text\n" * 10, "not an image ranlens can read")])
def test_evaluate_names_an_unreadable_image(tmp_path, content, needle):
    folder = tmp_path / "data" / "cat"
    folder.mkdir(parents=True)
    shutil.copyfile(CIFAR_FIXTURES / "cat" / "0000.jpg", folder / "0000.jpg")
    (folder / "0001.png").write_bytes(content)
    line = assert_error_after_progress(ranlens("evaluate", "--data", str(tmp_path / "data")),
                                       f"ranlens evaluate: error: {folder / '0001.png'}: ", needle)
    assert "server" not in line


def test_weights_name_their_architecture(tmp_path):
    result = ranlens("figure", str(PHOTOS / "coffee.jpg"), "--out", str(tmp_path / "f.png"),
                     "--weights", "attention92_cifar.v8")
    assert result.returncode == 0, result.stderr
    modules = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("coffee.jpg")]
    assert modules[-1] == "stage3.module2" and len(modules) == 6, result.stdout  # Attention-92's six
    manifest = WEIGHTS_DIR / "attention92_cifar.v8.json"
    for weights in ("attention92_cifar.v8", str(manifest)):
        assert_one_line_error(ranlens("evaluate", "--data", str(CIFAR_FIXTURES), "--arch", "attention56_cifar",
                                      "--weights", weights),
                              f"--weights {weights} are for attention92_cifar, not --arch attention56_cifar")


def test_evaluate_writes_metrics_of_the_test_split_only(tmp_path):
    """A manifest's metrics are its test-split figures (the served default is the best top-1): a
    train-split figure there is refused as a usage error, before any model loads or data is read."""
    manifest = (WEIGHTS_DIR / f"{DEFAULT}.json").read_bytes()
    result = ranlens("evaluate", "--data", str(tmp_path / "missing"), "--split", "train", "--write-metrics")
    assert_refused_argument(result, "evaluate", "--write-metrics", "test-split metrics", "--split train")
    assert (WEIGHTS_DIR / f"{DEFAULT}.json").read_bytes() == manifest


def test_a_forced_export_stopped_midway_keeps_the_weights_it_replaces(tmp_path, monkeypatch, finished_run):
    """``export --force`` copies and hashes aside and moves the new pair in at the end: stopped before,
    the weights it was replacing still match their manifest (copied over in place, they did not)."""
    from ranlens import cli
    from ranlens.model.weights import Weights, sha256_of

    run, weights = finished_run, tmp_path / "weights"
    export = ["export", str(run), "--name", "mine.v1", "--weights-dir", str(weights)]
    cli.main(export)
    before = {p.name: p.read_bytes() for p in weights.iterdir()}
    other = WEIGHTS_DIR / f"{PARENT}.safetensors"
    exported = run / f"epoch{RUN_EPOCHS:03d}.safetensors"  # export takes the last epoch's checkpoint
    assert (weights / "mine.v1.safetensors").read_bytes() == exported.read_bytes()
    shutil.copyfile(other, exported)  # the run's checkpoint is now other weights

    def stopped(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "sha256_of", stopped)  # stopped while the new copy is hashed
    with pytest.raises(SystemExit) as exited:
        cli.main([*export, "--force"])
    assert exited.value.code == 130
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == before  # the old pair, no partial file
    monkeypatch.undo()
    cli.main([*export, "--force"])
    replaced = Weights.from_manifest(weights / "mine.v1.json")
    assert replaced.path.read_bytes() == other.read_bytes() and sha256_of(replaced.path) == replaced.sha256
    assert sorted(p.name for p in weights.iterdir()) == ["mine.v1.json", "mine.v1.safetensors"]


def test_calibrate_ood_energy_stopped_before_its_manifest_keeps_the_knn_bank(tmp_path, monkeypatch):
    """Recalibrating knn weights with energy writes the manifest, then removes the bank it no longer
    names: stopped before the manifest is written, the old manifest still finds its bank."""
    import dataclasses

    from ranlens import cli
    from ranlens.model.weights import Weights

    shipped = get_weights("attention56_cifar", DEFAULT)
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in (shipped.file, shipped.ood["bank"]):
        shutil.copyfile(shipped.directory / name, folder / name)
    manifest = dataclasses.replace(shipped, directory=folder).write_manifest()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / split).symlink_to(CIFAR_FIXTURES, target_is_directory=True)

    def stopped(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Weights, "write_manifest", stopped)
    with pytest.raises(SystemExit) as exited:
        cli.main(["calibrate-ood", "--weights", str(manifest), "--data", str(data), "--method", "energy",
                  "--threads", "1"])
    assert exited.value.code == 130
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.undo()
    cli.main(["calibrate-ood", "--weights", str(manifest), "--data", str(data), "--method", "energy",
              "--threads", "1"])
    assert Weights.from_manifest(manifest).ood["method"] == "energy"
    assert sorted(p.name for p in folder.iterdir()) == sorted([manifest.name, shipped.file])


def test_status_names_a_damaged_run_and_still_reports_the_others(tmp_path, finished_run):
    damaged = Path(shutil.copytree(finished_run, tmp_path / "damaged"))
    (damaged / "last.pt").write_bytes(b"not a checkpoint")
    result = ranlens("status", str(damaged), str(finished_run))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(finished_run) in result.stdout, result.stdout  # the healthy run still gets its line
    assert_one_line_error(result, f"{damaged / 'last.pt'}: cannot read it")


def test_the_printed_verdict_compares_as_it_says():
    """explain prints the score rounded down, as the API and manifest.json give it: rounded to nearest,
    0.02566 printed as "score 0.0257 < threshold 0.0257"."""
    from types import SimpleNamespace

    from ranlens.cli import _ood_line

    line = _ood_line(SimpleNamespace(ood_score=0.02566, ood_views={"head": 0.02566}, out_of_distribution=True,
                                     ood_threshold=0.0257))
    assert line.startswith("OUT OF DISTRIBUTION: score 0.0256 (head 0.0256) < threshold 0.0257"), line
