"""A real browser against a real server: headless Chromium driven by Playwright.

Every page runs under the Content-Security-Policy the app is meant to serve (injected here into the page's
own response, so the test holds whether or not the server already sends it) and fails on any CSP violation,
console error or uncaught script error it did not expect. Screenshots go to a temporary folder, or to
``$RANLENS_SCREENSHOTS`` when set: ``RANLENS_SCREENSHOTS=docs pytest tests/test_browser.py`` remakes
docs/screenshot.png and docs/presenter.png.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import sys
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import PHOTOS, running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MODULES = ["stage1.module1", "stage2.module1", "stage3.module1"]
SLOW = 120_000  # ms: two shared CPU cores, and the model runs twice per image (explain, then ablate)
THREADS = os.environ.get("RANLENS_TEST_THREADS", "2")
pytestmark = pytest.mark.browser


def _server_command(*args: str) -> list[str]:
    return [sys.executable, *args]


@pytest.fixture(scope="module")
def server():
    with running_server(_server_command("-m", "uvicorn", "ranlens.app.main:app", "--host", "127.0.0.1"),
                        RANLENS_TORCH_THREADS=THREADS) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots(request, tmp_path_factory) -> Path:
    """Where screenshots go: never the work tree unless asked for with RANLENS_SCREENSHOTS (a relative
    path is taken from where pytest was started: the tests themselves run in an empty directory)."""
    wanted = os.environ.get("RANLENS_SCREENSHOTS")
    if wanted:
        target = request.config.invocation_params.dir / wanted
        target.mkdir(parents=True, exist_ok=True)
        return target
    return tmp_path_factory.mktemp("screenshots")


class Watch:
    """What went wrong in a page: script errors, console errors, CSP violations, failed requests."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        self.console: list[str] = []
        self.failed: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        page.on("requestfailed", lambda r: self.failed.append(f"{r.method} {r.url}: {r.failure}"))
        # runs before the page's own scripts, outside its CSP (Playwright injects it)
        page.add_init_script("""
            window.__csp = [];
            document.addEventListener("securitypolicyviolation",
              (e) => window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber}`));
        """)

    def check(self, console_ok: str | None = None, failed_ok: str | None = None) -> None:
        """Fails on anything unexpected; the patterns name console errors or failures a test caused on purpose."""
        violations = self.page.evaluate("window.__csp")
        assert isinstance(violations, list), "the CSP listener never ran"
        assert not violations, f"Content-Security-Policy violations: {violations}"
        assert not self.errors, f"uncaught script errors: {self.errors}"
        console = [m for m in self.console if not (console_ok and re.search(console_ok, m))]
        assert not console, f"console errors: {console}"
        failed = [f for f in self.failed if not (failed_ok and re.search(failed_ok, f))]
        assert not failed, f"failed requests: {failed}"


def _with_csp(route) -> None:
    """Serves the page itself with the app's CSP; every other request goes on untouched."""
    if route.request.resource_type != "document":
        route.fallback()
        return
    response = route.fetch()
    route.fulfill(response=response, headers={**response.headers, "content-security-policy": CSP})


def open_page(browser, url: str, height: int = 900, proxy=None, before=None, width: int = 1280):
    """A fresh page at a projector-like width (or ``width``), under the CSP, watched for errors;
    ``before(page)`` runs before it loads."""
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    watch = Watch(page)
    if before:
        before(page)
    page.route("**/*", proxy or _with_csp)
    page.goto(url)
    return page, watch


def wait_status(page, start: str = "", error: bool = False) -> None:
    """Waits until the status line starts with ``start`` (an error line, with ``error``). A function, not
    an expression: Playwright evaluates expression strings with eval, which the page's CSP forbids."""
    page.wait_for_function("([start, error]) => { const s = document.getElementById('status'); "
                           "return s.textContent.startsWith(start) && s.classList.contains('error') === error; }",
                           arg=[start, error], timeout=SLOW)


def upload(page, path: Path) -> None:
    page.set_input_files("#file", str(path))
    wait_status(page, path.name + ":")


def wait_for_ablation(page) -> None:
    page.wait_for_selector("table.ablation-table", timeout=SLOW)


def _overlay_pixels(page, index: int = 0) -> str:
    return page.eval_on_selector_all("canvas.overlay", f"(cs) => cs[{index}].toDataURL()")


def _api_explain(base: str, path: Path, content_type: str = "image/jpeg", **params: str) -> httpx.Response:
    return httpx.post(base + "api/v1/explain", files={"file": (path.name, path.read_bytes(), content_type)},
                      params=params, timeout=SLOW / 1000)


def _explain_queries(page) -> list[dict[str, str]]:
    """The query of every /api/v1/explain request the page makes from now on, in order."""
    asked: list[dict[str, str]] = []
    page.on("request", lambda r: "/api/v1/explain" in r.url and asked.append(dict(parse_qsl(urlsplit(r.url).query))))
    return asked


def _decoded_masks(body: dict) -> dict[str, np.ndarray]:
    """The whole float masks /api/v1/explain?all_channels=true sends, decoded the way its description says."""
    out = {}
    for a in body["attention"]:
        q = np.frombuffer(base64.b64decode(a["data"]), dtype="<u2").reshape(a["channels"], *a["shape"])
        out[a["module"]] = a["lo"] + q.astype(np.float64) * (a["hi"] - a["lo"]) / 65535
    return out


def run_axe(page) -> None:
    """axe-core (bundled by axe-playwright-python, so no network) over the whole page, WCAG 2.1 A/AA and
    best practice. The page has no violation at all today, so any, even a minor one, fails."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": AXE_TAGS},
                                       "resultTypes": ["violations"]})
    found = results.response["violations"]
    report = "\n".join(f"{v['id']} ({v['impact']}): {v['help']}: " + ", ".join(
        " ".join(n["target"]) for n in v["nodes"]) for v in found)
    assert not found, f"axe-core found accessibility problems:\n{report}"


class _Markup(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text += data.strip()


def test_page_markup_is_csp_clean_and_options_come_from_the_api(server):
    with urllib.request.urlopen(server, timeout=30) as r:
        markup = _Markup()
        markup.feed(r.read().decode())
    inline = [(tag, name) for tag, attrs in markup.tags for name in attrs if name == "style" or name.startswith("on")]
    assert not inline, f"inline style or event handler attributes, which the CSP blocks: {inline}"
    scripts = [attrs for tag, attrs in markup.tags if tag == "script"]
    assert scripts == [{"src": "static/js/main.js", "type": "module"}] and not markup.script_text
    assert not [t for t, _ in markup.tags if t == "style"], "a <style> element, which the CSP blocks"
    description = [a for t, a in markup.tags if t == "meta" and a.get("name") == "description"]
    assert description and len(description[0]["content"]) > 40

    def options(select_id: str) -> list[str]:
        # the <option>s that follow <select id=...> up to the next select
        tags = markup.tags
        start = next(i for i, (t, a) in enumerate(tags) if t == "select" and a.get("id") == select_id)
        out = []
        for t, a in tags[start + 1:]:
            if t == "select":
                break
            if t == "option":
                out.append(a["value"])
        return out

    luts = httpx.get(server + "api/v1/colormaps", timeout=30).json()
    assert options("colormap") == list(luts)
    assert all(len(lut) == 256 for lut in luts.values())
    schema = httpx.get(server + "openapi.json", timeout=30).json()
    reduction = next(p for p in schema["paths"]["/api/v1/predict"]["post"]["parameters"] if p["name"] == "reduction")
    assert options("reduction") == reduction["schema"]["enum"]
    modules = httpx.get(server + "api/v1/models", timeout=30).json()["models"][0]["modules"]
    assert options("channel-module") == [str(i) for i in range(len(modules))]


def test_upload_photo_see_modules_classes_and_display_controls(server, browser, shots):
    page, watch = open_page(browser, server, 1340)
    # the model's classes are named before anything is uploaded, with what happens to anything else
    note = page.inner_text("#classes-note")
    assert all(c in note for c in CLASSES) and "forced" in note

    upload(page, PHOTOS / "chelsea.jpg")
    panels = page.locator("#modules article")
    assert panels.count() == 3
    assert [panels.nth(i).locator("h3").inner_text() for i in range(3)] == MODULES
    assert "32×32" in panels.nth(0).inner_text() and "8×8" in panels.nth(2).inner_text()
    # the page opens on what the mask adds (README: the channel mean reads as "avoids the object")
    assert page.input_value("#reduction") == "added"
    assert page.inner_text("#module-stage1-module1 .shows") == \
        "Shows what the mask adds: mean of M·|T| over 64 channels."
    assert page.inner_text("#input-size") == "(centre crop, 32×32)"

    # five predictions, all among the model's classes, largest first, bars as wide as their numbers
    rows = page.eval_on_selector_all("#predictions li", """(lis) => lis.map((li) => ({
        label: li.children[0].textContent, pct: parseFloat(li.children[2].textContent),
        bar: li.querySelector('.bar > span').getBoundingClientRect().width
             / li.querySelector('.bar').getBoundingClientRect().width}))""")
    assert len(rows) == 5 and all(r["label"] in CLASSES for r in rows)
    assert [r["pct"] for r in rows] == sorted((r["pct"] for r in rows), reverse=True) and sum(r["pct"] for r in rows) <= 100.1
    assert all(abs(r["bar"] * 100 - r["pct"]) < 1.5 for r in rows), rows
    assert rows[0]["label"] == "cat", rows
    assert all(c in page.inner_text("#predictions-note") for c in CLASSES)
    label = page.get_attribute("canvas.overlay >> nth=0", "aria-label")
    assert "stage1.module1" in label and "mean of M·|T| over 64 channels" in label and " to " in label

    wait_for_ablation(page)
    run_axe(page)
    page.evaluate("window.scrollTo(0, document.getElementById('results').offsetTop - 50)")
    page.screenshot(path=str(shots / "screenshot.png"))

    # sliders recolour the overlays but leave the heavy "look inside" drawings alone
    inside = page.query_selector("#module-stage1-module1 .multiples canvas")
    before = _overlay_pixels(page)
    page.locator("#opacity").evaluate(
        "(el) => { el.value = 10; el.dispatchEvent(new Event('input', {bubbles: true})); }")
    after = _overlay_pixels(page)
    assert page.inner_text("#opacity-out") == "10%"
    assert before != after, "moving the opacity slider did not change the overlay"
    page.focus("#opacity")
    page.keyboard.press("ArrowRight")
    assert page.inner_text("#opacity-out") == "15%"
    assert _overlay_pixels(page) != after
    page.select_option("#scale", "shared")
    assert inside.evaluate("(c) => c.isConnected"), "a display slider redrew the look-inside view"
    page.select_option("#colormap", "jet")
    assert not inside.evaluate("(c) => c.isConnected"), "a new colormap did not redraw the look-inside view"
    assert page.locator("#module-stage1-module1 .multiples canvas").count() == 8

    # one channel: the box is bounded by the chosen module's channel count, and each panel says what it shows
    assert page.is_disabled("#channel") and page.is_disabled("#channel-module")
    page.select_option("#reduction", "channel")
    assert page.is_enabled("#channel") and page.is_enabled("#channel-module")
    assert page.get_attribute("#channel", "max") == "63"
    _wait_text(page, "#module-stage1-module1 .shows", "Shows channel 0 of 64.")  # asked for, then drawn
    page.select_option("#channel-module", "2")
    assert page.get_attribute("#channel", "max") == "255"
    assert "0 to 255" in page.inner_text("#channel-range")
    page.fill("#channel", "200")
    page.dispatch_event("#channel", "change")
    _wait_text(page, "#module-stage3-module1 .shows", "Shows channel 200 of 256.")
    assert page.inner_text("#module-stage1-module1 .shows") == "Shows channel 0 of 64."
    ch200 = _overlay_pixels(page, 2)
    page.fill("#channel", "999")
    page.dispatch_event("#channel", "change")
    assert page.input_value("#channel") == "255"
    _wait_text(page, "#module-stage3-module1 .shows", "Shows channel 255 of 256.")
    assert _overlay_pixels(page, 2) != ch200
    page.select_option("#channel-module", "0")
    assert page.get_attribute("#channel", "max") == "63" and page.input_value("#channel") == "0"

    # what the mask adds: a map of its own, named in each panel, with the channel box off again
    page.select_option("#reduction", "mean")
    mean_shown = _overlay_pixels(page, 1)
    page.select_option("#reduction", "added")
    assert page.is_disabled("#channel")
    assert page.inner_text("#module-stage2-module1 .shows") == \
        "Shows what the mask adds: mean of M·|T| over 128 channels."
    assert _overlay_pixels(page, 1) != mean_shown
    watch.check()
    page.close()


def test_png_and_npy_downloads_match_the_api(server, browser, tmp_path):
    page, watch = open_page(browser, server)
    asked = _explain_queries(page)
    upload(page, PHOTOS / "chelsea.jpg")
    api = _api_explain(server, PHOTOS / "chelsea.jpg", all_channels="true")
    assert api.status_code == 200, api.text
    expected = _decoded_masks(api.json())
    for module, channels, side in zip(MODULES, (64, 128, 256), (32, 16, 8)):
        panel = f"#module-{module.replace('.', '-')}"
        with page.expect_download() as info:
            page.click(f"{panel} .dl-npy")
        assert info.value.suggested_filename == f"{module}.mask.npy"
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        mask = np.load(path, allow_pickle=False)
        assert mask.dtype == np.dtype("<f4") and mask.shape == (channels, side, side)
        assert 0.0 <= mask.min() and mask.max() <= 1.0, "soft masks are sigmoids"
        want = expected[module]
        # a fresh run of the same image: equal up to the uint16 quantisation of the transfer
        step = (want.max() - want.min()) / 65535
        assert np.abs(mask - want).max() <= 2 * step + 1e-6, module
        assert abs(float(mask.mean()) - float(want.mean())) < 1e-5

        with page.expect_download() as info:
            page.click(f"{panel} .dl-png")
        assert info.value.suggested_filename == f"{module}.overlay.png"
        png = tmp_path / info.value.suggested_filename
        info.value.save_as(png)
        image = Image.open(png)
        assert image.format == "PNG" and image.size == (256, 256)
        shown = page.eval_on_selector(f"{panel} canvas.overlay", "(c) => c.toDataURL('image/png')")
        on_screen = Image.open(io.BytesIO(base64.b64decode(shown.split(",", 1)[1])))
        assert np.array_equal(np.asarray(image.convert("RGBA")), np.asarray(on_screen.convert("RGBA")))
    # the whole masks were asked for once, on the first raw-mask download, and kept for the others
    assert [q.get("all_channels") for q in asked] == [None, "true"], asked
    watch.check()
    page.close()


def test_channel_view_asks_for_one_channel_when_shown_and_keeps_it(server, browser):
    page, watch = open_page(browser, server)
    asked = _explain_queries(page)
    asked_urls: list[str] = []
    page.on("request", lambda r: "/api/v1/explain" in r.url and asked_urls.append(r.url))
    upload(page, PHOTOS / "chelsea.jpg")
    wait_for_ablation(page)
    assert [q.get("channel") for q in asked] == [None]  # the image itself: reductions, no channel
    added = _overlay_pixels(page, 0)

    held = []

    def is_channel(url: str) -> bool:
        return "/api/v1/explain" in url and "channel=" in url

    def hold(route) -> None:
        held.append(route)

    page.route(is_channel, hold)  # the first channel asked for waits here
    page.select_option("#reduction", "channel")
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "choosing the channel view asked for no channel"
    # while it is on its way: the last map stays, dimmed and marked busy, and the controls say so
    assert page.inner_text("#channel-status") == "Loading channel 0…"
    assert page.get_attribute("#module-stage1-module1", "aria-busy") == "true"
    assert page.eval_on_selector("#module-stage1-module1", "(el) => el.classList.contains('loading')")
    assert _overlay_pixels(page, 0) == added
    page.unroute(is_channel, hold)
    held[0].fallback()
    _wait_text(page, "#module-stage1-module1 .shows", "Shows channel 0 of 64.")
    assert page.inner_text("#channel-status") == ""
    assert page.get_attribute("#module-stage1-module1", "aria-busy") == "false"
    ch0 = _overlay_pixels(page, 0)
    assert ch0 != added
    assert [q.get("channel") for q in asked] == [None, "0"]
    assert asked[1]["model"] == asked[0]["model"]

    # the channel box stepped through 1, 2 and 3 at 60 ms a step: only 3 is asked for (debounced)
    page.eval_on_selector("#channel", """async (el) => { for (const v of ["1", "2", "3"]) {
        el.value = v; el.dispatchEvent(new Event("input", { bubbles: true }));
        await new Promise((done) => setTimeout(done, 60)); } }""")
    _wait_text(page, "#module-stage1-module1 .shows", "Shows channel 3 of 64.")
    assert [q.get("channel") for q in asked] == [None, "0", "3"]
    assert [urlsplit(u).path.endswith("/api/v1/explain/channel") for u in asked_urls] == [False, True, True]
    ch3 = _overlay_pixels(page, 0)
    assert ch3 != ch0
    # what is drawn is the API's channel 3 of that module (its range is in the canvas's label)
    api = _api_explain(server, PHOTOS / "chelsea.jpg", channel="3").json()["attention"][0]["channel"]
    assert f"values {api['lo']:.3f} to {api['hi']:.3f}" in page.get_attribute("canvas.overlay >> nth=0", "aria-label")
    # back to channel 0: from the page's cache, drawn at once, nothing asked
    page.fill("#channel", "0")
    page.dispatch_event("#channel", "change")
    assert page.inner_text("#module-stage1-module1 .shows") == "Shows channel 0 of 64."
    assert _overlay_pixels(page, 0) == ch0
    page.wait_for_timeout(1000)
    assert [q.get("channel") for q in asked] == [None, "0", "3"]
    watch.check()
    page.close()


def _send_file(page, event: str, selector: str, path: Path, mime: str = "image/jpeg") -> None:
    """A drop (DragEvent) or paste (ClipboardEvent) of a real file, as the browser would deliver it."""
    page.eval_on_selector(selector, """(target, [event, name, mime, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name, { type: mime }));
        const init = { bubbles: true, cancelable: true };
        target.dispatchEvent(event === "drop" ? new DragEvent("drop", { ...init, dataTransfer: data })
                                              : new ClipboardEvent("paste", { ...init, clipboardData: data }));
    }""", [event, path.name, mime, base64.b64encode(path.read_bytes()).decode()])


def test_choose_drop_and_paste_an_image(server, browser):
    choosers = []
    # listening turns on Playwright's file-chooser interception, which it sends without waiting for an answer:
    # done before the page loads, it is surely on by the time the key is pressed
    page, watch = open_page(browser, server, before=lambda p: p.on("filechooser", lambda c: choosers.append(c)))
    # the visible button opens the file picker, from the keyboard too
    page.focus("#choose-file")
    page.keyboard.press("Enter")
    for _ in range(100):
        if choosers:
            break
        page.wait_for_timeout(50)
    assert choosers, "Enter on the choose-file button opened no file picker"
    choosers[0].set_files(str(PHOTOS / "coffee.jpg"))
    wait_status(page, "coffee.jpg:")
    _send_file(page, "drop", "#dropzone", PHOTOS / "chelsea.jpg")
    wait_status(page, "chelsea.jpg: cat ")
    # a file let go beside the drop zone: the page takes it (dragover and drop cancelled), where the
    # browser's own action would be to leave the page and open the file
    for selector in ("header h1", "#results", "footer"):
        cancelled = page.eval_on_selector(selector, """(target) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(4)], "x.jpg", { type: "image/jpeg" }));
            return !target.dispatchEvent(new DragEvent("dragover", { bubbles: true, cancelable: true, dataTransfer: data }));
        }""")
        assert cancelled, f"a file dragged over {selector} would be opened by the browser"
    _send_file(page, "drop", "footer", PHOTOS / "coffee.jpg")
    wait_status(page, "coffee.jpg:")
    _send_file(page, "paste", "body", PHOTOS / "cifar10-ship.jpg")
    wait_status(page, "cifar10-ship.jpg:")
    assert page.inner_text("#topbar-text").startswith("cifar10-ship.jpg: ")
    watch.check(failed_ok="api/v1/ablate.*ERR_ABORTED")  # each new image cancels the last one's ablation
    page.close()


def test_example_gallery_and_bad_upload_message(server, browser, tmp_path):
    page, watch = open_page(browser, server, 720)
    page.click("button.example[data-name='cifar10-ship.jpg']")
    wait_status(page, "cifar10-ship.jpg:")
    wait_for_ablation(page)  # else the bad upload below would (rightly) cancel it
    assert page.locator("#modules article").count() == 3
    assert page.get_attribute("button.example[data-name='cifar10-ship.jpg'] img", "alt") == ""
    # its accessible name, read hidden text included
    name = " ".join(page.text_content("button.example[data-name='cifar10-ship.jpg']").split())
    assert name == "CIFAR-10 test image: ship"

    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    problem = httpx.post(server + "api/v1/explain", files={"file": ("notes.txt", bad.read_bytes(), "text/plain")},
                         timeout=30)
    assert problem.status_code == 415 and problem.headers["content-type"] == "application/problem+json"
    page.set_input_files("#file", str(bad))
    wait_status(page, error=True)
    status = page.inner_text("#status")
    assert status.startswith("Could not analyse notes.txt: ") and problem.json()["title"] in status
    assert problem.json()["detail"] in status
    watch.check(console_ok="status of 415")
    page.close()


def test_out_of_distribution_warning_for_noise_and_not_for_a_cifar_image(server, browser, tmp_path):
    noise = tmp_path / "noise.png"  # photo-sized: noise made at 32x32 passes as a frog (tests/test_ood.py)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(noise)
    page, watch = open_page(browser, server)
    upload(page, noise)
    assert page.is_visible("#ood-warning") and not page.is_visible("#ood-missing")
    warning = page.inner_text("#ood-warning")
    assert "looks unlike the" in warning and "forced choice" in warning and "below" in warning
    # which view found it unfamiliar: noise's texture, at the first attention module (model/ood.py)
    assert "Unfamiliar in" in warning and "the texture of stage1.module1's output" in warning
    wait_for_ablation(page)  # else the next upload would (rightly) cancel it
    run_axe(page)  # the warning's colours and markup too
    upload(page, PHOTOS / "cifar10-cat.jpg")
    assert not page.is_visible("#ood-warning") and not page.is_visible("#ood-missing")
    wait_for_ablation(page)
    watch.check()
    page.close()


def test_a_newer_upload_cancels_the_older_one(server, browser):
    page, watch = open_page(browser, server)
    held = []

    def hold_first(route):
        # the first analysis never hears back until the second has finished: the slow answer
        if not held:
            held.append(route)
        else:
            route.fallback()

    page.route("**/api/v1/explain*", hold_first)
    page.set_input_files("#file", str(PHOTOS / "chelsea.jpg"))
    wait_status(page, "Analysing chelsea.jpg")
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the first upload never asked for /api/v1/explain"
    upload(page, PHOTOS / "cifar10-ship.jpg")
    wait_for_ablation(page)
    # the page aborted the first request when the second upload began, so no late answer for the first
    # image can reach it. (Answering the held route now is no test of that: Playwright drops an answer
    # to an aborted request without a word, whatever the page would have done with it.)
    assert held[0].request.failure == "net::ERR_ABORTED", held[0].request.failure
    assert page.inner_text("#status").startswith("cifar10-ship.jpg: ")
    assert page.inner_text("#topbar-text").startswith("cifar10-ship.jpg: ")
    assert "chelsea" not in page.inner_text("#results")
    assert any("api/v1/explain" in f and "ABORTED" in f for f in watch.failed), watch.failed
    watch.check(failed_ok="api/v1/explain.*ERR_ABORTED")
    page.close()


def _hold_first(held: list):
    """A route handler that keeps the first matching request unanswered and lets the others through."""
    def handler(route):
        if not held:
            held.append(route)
        else:
            route.fallback()
    return handler


def _wait_held(page, held: list) -> None:
    for _ in range(400):
        if held:
            return
        page.wait_for_timeout(50)
    raise AssertionError("the request to hold was never made")


def test_switching_model_while_an_upload_is_analysed_analyses_that_upload(server, browser):
    """The image asked for last is what a switch re-analyses, not the older one on screen (or none);
    and the attention-off table is the masks' model's."""
    a92 = next(m["weights"] for m in httpx.get(server + "api/v1/models").json()["models"]
               if m["name"] == "attention92_cifar")
    page, watch = open_page(browser, server)
    held = []
    page.route("**/api/v1/explain*", _hold_first(held))
    page.set_input_files("#file", str(PHOTOS / "chelsea.jpg"))
    _wait_held(page, held)
    page.select_option("#model", a92)
    _wait_text(page, "#status", f"by {a92}")
    assert page.inner_text("#status").startswith("chelsea.jpg: ")
    assert page.locator("#modules article").count() == 6
    page.wait_for_function("() => document.querySelectorAll('table.ablation-table thead th').length === 9",
                           timeout=SLOW)
    watch.check(failed_ok="api/v1/explain.*ERR_ABORTED")
    page.close()


def test_a_failed_upload_leaves_the_image_on_screen_whole(server, browser):
    """Starting a new image stops the on-screen one's ablation; when the new one fails, the old one,
    still on screen, gets its ablation back rather than "Stopped"."""
    page, watch = open_page(browser, server)
    held = []
    page.route("**/api/v1/ablate*", _hold_first(held))
    page.set_input_files("#file", str(PHOTOS / "chelsea.jpg"))
    _wait_held(page, held)
    wait_status(page, "chelsea.jpg:")
    page.route("**/api/v1/explain*", lambda route: route.abort("connectionrefused"))
    page.set_input_files("#file", str(PHOTOS / "coffee.jpg"))
    wait_status(page, "Could not analyse coffee.jpg", error=True)
    wait_for_ablation(page)
    assert page.inner_text("table.ablation-table tbody tr:first-child th") == "cat"
    assert page.inner_text("#topbar-text").startswith("chelsea.jpg: ")
    watch.check(console_ok="ERR_CONNECTION_REFUSED", failed_ok="ERR_CONNECTION_REFUSED|api/v1/ablate.*ERR_ABORTED")
    page.close()


def test_failed_requests_show_a_message_not_a_spinner(server, browser):
    page, watch = open_page(browser, server)
    page.route("**/api/v1/ablate*", lambda route: route.abort("connectionrefused"))
    upload(page, PHOTOS / "chelsea.jpg")
    page.wait_for_selector("#ablation .error", timeout=SLOW)
    text = page.inner_text("#ablation")
    assert text.startswith("Could not run with attention off: the server could not be reached") and "Running" not in text

    page.route("**/api/v1/explain*", lambda route: route.abort("connectionrefused"))
    page.set_input_files("#file", str(PHOTOS / "coffee.jpg"))
    wait_status(page, error=True)
    assert page.inner_text("#status").startswith("Could not analyse coffee.jpg: the server could not be reached")
    watch.check(console_ok="ERR_CONNECTION_REFUSED", failed_ok="ERR_CONNECTION_REFUSED")
    page.close()


def test_teaching_view_and_presenter_mode_by_keyboard(server, browser, shots):
    page, watch = open_page(browser, server, 720)
    # the architecture view is drawn from the served model: exactly its three modules
    page.wait_for_selector("#arch-svg svg g.att")
    assert page.eval_on_selector_all("#arch-svg g.att", "(gs) => gs.map((g) => g.dataset.module)") == MODULES

    page.click("button.example[data-name='chelsea.jpg']")
    wait_status(page, "chelsea.jpg:")
    wait_for_ablation(page)
    headers = page.eval_on_selector_all("table.ablation-table thead th", "(ths) => ths.map((t) => t.textContent)")
    assert headers == ["class", "attention on", "all masks off", *[f"{m} off" for m in MODULES]]
    assert page.inner_text("table.ablation-table tbody tr:first-child th") == "cat"

    # choosing a module in the diagram opens its "look inside" view and makes it the Channel box's module
    page.focus("#arch-svg g.att[data-module='stage2.module1']")
    page.keyboard.press("Enter")
    assert page.locator("#module-stage2-module1 details.inside").evaluate("(d) => d.open")
    assert page.locator("#module-stage2-module1 .multiples canvas").count() == 8
    assert re.fullmatch(r"mean 0\.\d{3}, standard deviation 0\.\d{3}",
                        page.inner_text("#module-stage2-module1 .hist-stats"))
    assert page.input_value("#channel-module") == "1"

    # a bare "p" is no shortcut (WCAG 2.1.4: it would fire from any button, or from dictated text),
    # neither on a control nor on the page itself; Alt+P is, wherever the focus is
    presenting = "document.body.classList.contains('presenter')"
    for where in ("button.example[data-name='chelsea.jpg']", "#module-stage1-module1 canvas.overlay", "body"):
        for key in ("p", "Shift+KeyP"):
            page.focus(where)
            page.keyboard.press(key)
            assert not page.evaluate(presenting), f"{key} on {where} turned presenter mode on"
    page.focus("#colormap")
    page.keyboard.press("Alt+KeyP")
    assert page.evaluate(presenting)
    page.keyboard.press("Alt+KeyP")
    assert not page.evaluate(presenting)
    page.focus("body")
    page.keyboard.press("Alt+KeyP")
    assert page.evaluate(presenting)
    assert page.get_attribute("#presenter-toggle", "aria-keyshortcuts") == "Alt+P"
    # the header is kept for screen readers, but its selects would be invisible tab stops
    assert page.is_hidden("#model") and page.is_hidden("#compare")
    assert page.get_attribute("#presenter-toggle", "aria-pressed") == "true"
    run_axe(page)
    shown = []
    for _ in range(4):
        visible = page.eval_on_selector_all(
            "#modules article", "(as) => as.filter((a) => getComputedStyle(a).display !== 'none').map((a) => a.id)")
        assert len(visible) == 1
        shown.append(visible[0])
        if visible[0] == "module-stage3-module1":
            page.screenshot(path=str(shots / "presenter.png"))
        page.keyboard.press("ArrowRight")
    assert shown == ["module-stage2-module1", "module-stage3-module1", "module-stage1-module1",
                     "module-stage2-module1"]
    page.keyboard.press("ArrowLeft")
    assert page.inner_text("#presenter-pos") == "module 2 of 3"
    # the current image's predictions stay in view
    assert page.is_visible("#topbar") and page.inner_text("#topbar-text").startswith("chelsea.jpg: cat ")
    page.keyboard.press("Escape")
    assert not page.evaluate("document.body.classList.contains('presenter')")
    watch.check()
    page.close()


def _wait_text(page, selector: str, needle: str) -> None:
    page.wait_for_function("([sel, needle]) => document.querySelector(sel)?.textContent.includes(needle)",
                           arg=[selector, needle], timeout=SLOW)


def test_model_switcher_and_side_by_side(server, browser, shots):
    models = httpx.get(server + "api/v1/models").json()
    by_name = {m["name"]: m["weights"] for m in models["models"]}
    a56, a92 = by_name["attention56_cifar"], by_name["attention92_cifar"]
    page, watch = open_page(browser, server, 1000)
    assert not page.is_visible("#topbar")  # nothing analysed yet: no empty bar (hidden beats .topbar's flex)
    assert page.eval_on_selector_all("#model option", "(os) => os.map((o) => o.value)") == [a56, a92]
    assert page.input_value("#model") == models["default"]
    disabled = "(os) => os.filter((o) => o.disabled).map((o) => o.value)"
    assert page.eval_on_selector_all("#compare option", disabled) == [models["default"]]  # not with itself
    page.wait_for_selector("#arch-svg svg g.att")
    page.click("button.example[data-name='chelsea.jpg']")
    wait_status(page, "chelsea.jpg:")
    wait_for_ablation(page)
    assert page.locator("#modules article").count() == 3

    # another model: the same image again, its six modules, its architecture and its ablation
    page.select_option("#model", a92)
    _wait_text(page, "#status", f"by {a92}")
    assert page.eval_on_selector_all("#compare option", disabled) == [a92]
    assert page.locator("#modules article").count() == 6
    _wait_text(page, "#model-line", "6 attention modules")  # described once the results are shown (async)
    assert "attention92_cifar" in page.inner_text("#model-line")
    page.wait_for_function("() => document.querySelectorAll('#arch-svg g.att').length === 6", timeout=SLOW)
    assert page.eval_on_selector_all("#arch-svg g.att", "(gs) => gs.map((g) => g.dataset.module)") == [
        "stage1.module1", "stage1.module2", "stage2.module1", "stage2.module2", "stage3.module1", "stage3.module2"]
    page.wait_for_function("() => document.querySelectorAll('table.ablation-table thead th').length === 9",
                           timeout=SLOW)

    # side by side: rows by module name, A56's missing modules said in words
    page.select_option("#compare", a56)
    page.wait_for_selector("#compare-section:not([hidden])", timeout=SLOW)
    assert page.inner_text("#compare-h") == f"Side by side: {a92} and {a56}"
    heads = page.eval_on_selector_all("#compare-grid .col-head", "(ps) => ps.map((p) => p.textContent)")
    assert heads == [a92, a56]
    cells = page.eval_on_selector_all(
        "#compare-grid > article, #compare-grid > p.absent", "(es) => es.map((e) => e.tagName === 'P' ? 'P:' + e.textContent : 'ARTICLE')")
    assert len(cells) == 12  # six rows (A92's modules), two columns
    assert sum(c.startswith("P:") for c in cells) == 3 and f"{a56} has no stage1.module2." in " ".join(cells)
    titles = page.eval_on_selector_all("#compare-grid article h4", "(hs) => hs.map((h) => h.textContent)")
    assert f"stage1.module1 · {a56}" in titles and f"stage3.module2 · {a92}" in titles
    # both models' overlays are drawn, and differ
    drawn = page.eval_on_selector_all("#compare-grid article canvas.overlay", "(cs) => cs.map((c) => c.toDataURL())")
    assert len(drawn) == 9 and len(set(drawn)) == 9
    # the sticky top bar would sit across the middle of an element screenshot
    page.eval_on_selector("#topbar", "(bar) => { bar.hidden = true; }")
    assert not page.is_visible("#topbar")
    page.locator("#compare-section").screenshot(path=str(shots / "compare.png"))
    page.eval_on_selector("#topbar", "(bar) => { bar.hidden = false; }")
    run_axe(page)
    # single channels in both columns: channel 0 of each model, asked for once per model
    asked = _explain_queries(page)
    page.select_option("#reduction", "channel")
    page.wait_for_function("""() => {
        const shows = [...document.querySelectorAll("#compare-grid article .shows")];
        return shows.length === 9 && shows.every((p) => p.textContent.startsWith("Shows channel 0 of"))
          && !document.querySelector("#compare-grid article.loading"); }""", timeout=SLOW)
    assert sorted((q["model"], q["channel"]) for q in asked) == sorted([(a92, "0"), (a56, "0")]), asked
    drawn = page.eval_on_selector_all("#compare-grid article canvas.overlay", "(cs) => cs.map((c) => c.toDataURL())")
    assert len(set(drawn)) == 9
    page.select_option("#reduction", "added")
    # the compared model chosen as Model: one model again, the side-by-side view goes away
    page.select_option("#model", a56)
    assert page.input_value("#compare") == ""
    _wait_text(page, "#status", f"by {a56}")
    page.wait_for_selector("#compare-section[hidden]", state="attached", timeout=SLOW)
    watch.check(failed_ok=r"/api/v1/ablate\?.*ERR_ABORTED")  # each new analysis cancels the last one's ablation
    page.close()


def test_the_class_notes_follow_the_chosen_model(browser, tmp_path):
    """Served weights of other classes (someone's own data): switching to them names their classes and
    calibration data, not the first model's."""
    import dataclasses

    from ranlens.model.weights import get_weights

    shipped = get_weights("attention56_cifar", "DEFAULT")
    (tmp_path / shipped.file).symlink_to(shipped.path)
    (tmp_path / shipped.ood["bank"]).symlink_to(shipped.directory / shipped.ood["bank"])
    shapes = ("circle", "square", "star", "cross", "ring", "wave", "dot", "line", "arrow", "heart")
    manifest = dataclasses.replace(shipped, name="shapes.v1", classes=shapes, directory=tmp_path,
                                   ood={**shipped.ood, "data": "Shapes"}).write_manifest()
    with running_server(_server_command("-m", "ranlens", "serve"), RANLENS_WEIGHTS=f"{shipped.name},{manifest}",
                        RANLENS_DEFAULT_MODEL=shipped.name, RANLENS_TORCH_THREADS=THREADS) as url:
        page, watch = open_page(browser, url)
        assert "airplane" in page.inner_text("#classes-note")
        page.select_option("#model", "shapes.v1")
        _wait_text(page, "#model-line", "shapes.v1")
        assert page.inner_text("#class-list") == ", ".join(shapes)
        assert page.inner_text("#predictions-classes") == ", ".join(shapes)
        assert page.inner_text("#ood-data").strip() == "Shapes"
        page.select_option("#model", shipped.name)
        _wait_text(page, "#class-list", "airplane")
        assert page.inner_text("#ood-data").startswith("CIFAR-10")
        watch.check()
        page.close()


def test_page_behind_a_path_prefix(browser):
    """``ranlens serve`` with RANLENS_ROOT_PATH behind a proxy that strips the prefix: every request the
    page makes must go through the prefix and succeed."""
    prefix = "/ranlens"
    with running_server(_server_command("-m", "ranlens", "serve"), RANLENS_ROOT_PATH=prefix,
                        RANLENS_TORCH_THREADS=THREADS) as url:
        seen: list[tuple[str, str, int]] = []
        outside: list[str] = []

        def proxy(route):
            parts = urlsplit(route.request.url)
            if not parts.path.startswith(prefix + "/"):
                outside.append(route.request.url)  # a real proxy would send this to some other site
                route.fulfill(status=404, body="not under the prefix")
                return
            stripped = urlunsplit(parts._replace(path=parts.path[len(prefix):]))
            response = route.fetch(url=stripped)
            seen.append((route.request.method, parts.path, response.status))
            headers = dict(response.headers)
            if route.request.resource_type == "document":
                headers["content-security-policy"] = CSP
            route.fulfill(response=response, headers=headers)

        default = httpx.get(url + "api/v1/models", timeout=30).json()["default"]  # the model the page opens on
        page, watch = open_page(browser, url.rstrip("/") + prefix + "/", proxy=proxy)
        page.wait_for_selector("#arch-svg svg g.att", timeout=SLOW)
        page.click("button.example[data-name='coffee.jpg']")
        wait_status(page, "coffee.jpg:")
        wait_for_ablation(page)
        assert page.locator("#modules article").count() == 3
        assert page.eval_on_selector("footer a", "(a) => new URL(a.href).pathname") == prefix + "/docs"
        watch.check()
        page.close()

    assert not outside, f"requests outside the prefix: {outside}"
    assert all(status == 200 for _, _, status in seen), [s for s in seen if s[2] != 200]
    paths = {path for _, path, _ in seen}
    for needed in ("/", "/static/style.css", "/static/js/main.js", "/static/js/api.js", "/api/v1/colormaps",
                   f"/api/v1/models/{default}/architecture", "/static/examples/coffee.jpg",
                   "/api/v1/explain", "/api/v1/ablate"):
        assert prefix + needed in paths, f"{prefix + needed} was never requested: {sorted(paths)}"


def _no_sideways_scroll(page, when: str) -> None:
    sizes = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    if sizes[0] > sizes[1]:
        wide = page.evaluate("""() => [...document.querySelectorAll("body *")]
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5 && e.getClientRects().length)
            .slice(0, 8).map((e) => `${e.tagName.toLowerCase()}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)""")
        raise AssertionError(f"{when}: the page is {sizes[0]} pixels wide in a {sizes[1]}-pixel window: {wide}")


def test_a_phone_sized_window_never_scrolls_sideways(server, browser):
    """375 pixels (a phone), then 320: after an analysis, with a second model side by side, a single channel
    and presenter mode, the page fits the window's width, and the diagram takes the whole width
    rather than a sliver of it."""
    a92 = next(m["weights"] for m in httpx.get(server + "api/v1/models").json()["models"]
               if m["name"] == "attention92_cifar")
    page, watch = open_page(browser, server, 800, width=375)
    page.wait_for_selector("#arch-svg svg g.att", timeout=SLOW)
    _no_sideways_scroll(page, "on arrival")
    page.click("button.example[data-name='chelsea.jpg']")
    wait_status(page, "chelsea.jpg:")
    wait_for_ablation(page)
    _no_sideways_scroll(page, "after an analysis")
    page.select_option("#compare", a92)
    page.wait_for_selector("#compare-section:not([hidden])", timeout=SLOW)
    _wait_text(page, "#status", "chelsea.jpg:")
    wait_for_ablation(page)
    page.select_option("#reduction", "channel")
    page.wait_for_function("() => !document.querySelector('article.loading')", timeout=SLOW)
    for width in (375, 320):
        page.set_viewport_size({"width": width, "height": 800})
        _no_sideways_scroll(page, f"side by side at {width} pixels")
        # one column: the diagram as wide as the section (its 12-pixel text is not shrunk to a few pixels)
        ratio = page.evaluate("""() => document.querySelector("#arch-svg svg").getBoundingClientRect().width
                                       / document.querySelector(".architecture").getBoundingClientRect().width""")
        assert ratio > 0.9, f"the architecture diagram takes {ratio:.0%} of the width at {width} pixels"
        columns = page.eval_on_selector("#compare-grid", "(g) => getComputedStyle(g).gridTemplateColumns.split(' ').length")
        assert columns == 1
        page.keyboard.press("Alt+KeyP")
        assert page.evaluate("document.body.classList.contains('presenter')")
        _no_sideways_scroll(page, f"presenter mode at {width} pixels")
        page.keyboard.press("Escape")
    run_axe(page)
    watch.check(failed_ok=r"/api/v1/ablate\?.*ERR_ABORTED")  # the comparison cancels the first ablation
    page.close()


def _problem(status: int, title: str, detail: str):
    import json

    return {"status": status, "content_type": "application/problem+json",
            "body": json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})}


def test_a_channel_that_cannot_be_loaded_says_so_in_its_panels(server, browser):
    default = httpx.get(server + "api/v1/models", timeout=30).json()["default"]  # what answers the upload
    page, watch = open_page(browser, server)
    upload(page, PHOTOS / "chelsea.jpg")
    wait_for_ablation(page)

    def is_channel(url: str) -> bool:
        return "/api/v1/explain/channel" in url

    page.route(is_channel, lambda route: route.fulfill(**_problem(503, "Busy", "try again")))
    page.select_option("#reduction", "channel")
    _wait_text(page, "#module-stage1-module1 .shows", "Could not load channel 0")
    for module in MODULES:
        panel = f"#module-{module.replace('.', '-')}"
        assert page.get_attribute(panel, "aria-busy") == "false", panel
        assert not page.eval_on_selector(panel, "(el) => el.classList.contains('loading')"), panel
        assert page.inner_text(f"{panel} .shows").startswith(f"Could not load channel 0 of {default}: Busy: try again")
    assert page.inner_text("#channel-status").startswith("Could not load channel 0")
    # another channel tries again, and draws
    page.unroute(is_channel)
    page.fill("#channel", "1")
    page.dispatch_event("#channel", "change")
    _wait_text(page, "#module-stage1-module1 .shows", "Shows channel 1 of 64.")
    assert not page.eval_on_selector("#module-stage1-module1", "(el) => el.classList.contains('failed')")
    assert page.get_attribute("#module-stage1-module1", "aria-busy") == "false"
    watch.check(console_ok="status of 503")
    page.close()


def test_a_failed_model_switch_leaves_the_header_with_the_results(server, browser):
    """The header, class notes and diagram describe the model whose results are on screen: when the
    re-analysis with another model fails, the Model box goes back to it. And a failure to read the
    models' details stays in view, not overwritten by the analysis that follows."""
    models = httpx.get(server + "api/v1/models").json()["models"]
    a56, a92 = (next(m["weights"] for m in models if m["name"] == n) for n in ("attention56_cifar", "attention92_cifar"))
    page, watch = open_page(browser, server)
    page.wait_for_selector("#arch-svg svg g.att", timeout=SLOW)
    page.click("button.example[data-name='chelsea.jpg']")
    wait_status(page, "chelsea.jpg:")
    wait_for_ablation(page)

    def explain_a92(url: str) -> bool:
        return "/api/v1/explain" in url and f"model={a92}" in url

    page.route(explain_a92, lambda route: route.fulfill(**_problem(503, "Model busy", "try later")))
    page.select_option("#model", a92)
    wait_status(page, "Could not analyse chelsea.jpg: Model busy: try later", error=True)
    assert f"back to {a56}" in page.inner_text("#status")
    assert page.input_value("#model") == a56
    page.wait_for_timeout(1000)  # time for a wrong diagram or header to arrive
    line = page.inner_text("#model-line")
    assert "attention56_cifar" in line and "3 attention modules" in line, line
    assert page.locator("#arch-svg g.att").count() == 3
    assert page.locator("#modules article").count() == 3
    wait_for_ablation(page)
    page.unroute(explain_a92)

    def catalog(url: str) -> bool:
        return urlsplit(url).path.endswith("/api/v1/models")

    page.route(catalog, lambda route: route.fulfill(**_problem(500, "Broken", "no catalog")))
    page.select_option("#model", a92)
    _wait_text(page, "#status", f"by {a92}")
    _wait_text(page, "#model-line", "could not read its details")
    assert "Broken: no catalog" in page.inner_text("#model-line")
    assert not page.eval_on_selector("#status", "(s) => s.classList.contains('error')")
    page.wait_for_function("() => document.querySelectorAll('#arch-svg g.att').length === 6", timeout=SLOW)
    page.unroute(catalog)

    # a failure that is not the switch's (a new file refused while the switch's answer is on its way)
    # leaves the Model box as the user chose it
    def explain_a56(url: str) -> bool:
        return "/api/v1/explain" in url and f"model={a56}" in url

    held: list = []

    def hold_the_first(route) -> None:  # the switch's analysis, never answered: the new file aborts it
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route(explain_a56, hold_the_first)
    page.select_option("#model", a56)
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Analysing')")
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture"}])
    wait_status(page, "Could not analyse notes.txt:", error=True)
    assert "back to" not in page.inner_text("#status") and page.input_value("#model") == a56
    page.unroute(explain_a56)
    watch.check(console_ok="status of (503|500|415|400)", failed_ok=r"/api/v1/(ablate|explain)\?.*ERR_ABORTED")
    page.close()


def test_failure_messages_say_what_failed(server, browser):
    """Only a request that got no answer is "could not be reached": an answer that is not JSON, or a
    result the page cannot draw, say so."""
    import json

    page, watch = open_page(browser, server)
    page.route("**/api/v1/explain*", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<!doctype html><title>Sign in to the proxy</title>"))
    upload_error = "Could not analyse chelsea.jpg: "
    page.set_input_files("#file", str(PHOTOS / "chelsea.jpg"))
    wait_status(page, upload_error, error=True)
    assert page.inner_text("#status") == upload_error + "the server's answer was not JSON (200, text/html)"
    page.unroute("**/api/v1/explain*")

    body = _api_explain(server, PHOTOS / "chelsea.jpg").json()
    body["images"]["display"] = "data:image/png;base64,AAAA"  # a picture no browser decodes
    page.route("**/api/v1/explain*", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(body)))
    page.set_input_files("#file", str(PHOTOS / "chelsea.jpg"))
    wait_status(page, upload_error + "could not draw the result (EncodingError", error=True)
    assert "could not be reached" not in page.inner_text("#status")
    watch.check(console_ok="EncodingError")
    page.close()


def test_a_file_over_the_servers_limit_is_refused_by_the_page(browser):
    """With RANLENS_MAX_UPLOAD_BYTES at 20,000: a larger file is never sent (a browser may show the
    server's early 413 as a reset connection), and the page says how large it is and what the limit is."""
    with running_server(_server_command("-m", "ranlens", "serve"), RANLENS_MAX_UPLOAD_BYTES="20000",
                        RANLENS_ARCH="attention56_cifar", RANLENS_TORCH_THREADS=THREADS) as url:
        page, watch = open_page(browser, url)
        assert page.get_attribute("body", "data-max-upload-bytes") == "20000"
        asked = _explain_queries(page)
        upload(page, PHOTOS / "cifar10-cat.jpg")  # 973 bytes
        wait_for_ablation(page)
        assert len(asked) == 1
        big = PHOTOS / "chelsea.jpg"
        assert big.stat().st_size > 20000
        refused = "Could not analyse chelsea.jpg: it is too large (30.8 KB; the limit is 19.5 KB)"
        page.set_input_files("#file", str(big))
        wait_status(page, "Could not analyse chelsea.jpg", error=True)
        assert page.inner_text("#status") == refused
        _send_file(page, "drop", "#dropzone", big)
        wait_status(page, "Could not analyse chelsea.jpg", error=True)
        page.click("button.example[data-name='chelsea.jpg']")  # fetched by the page, then refused
        wait_status(page, "Could not analyse chelsea.jpg", error=True)
        assert page.inner_text("#status") == refused
        wait_for_ablation(page)
        assert len(asked) == 1, asked  # nothing sent: the image on screen is still the cat
        assert page.inner_text("#topbar-text").startswith("cifar10-cat.jpg: ")
        watch.check(failed_ok=r"/api/v1/ablate\?.*ERR_ABORTED")
        page.close()
