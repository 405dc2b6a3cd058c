"""A real browser against a real server: headless Chromium driven by Playwright."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .conftest import PHOTOS, ROOT, running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "screenshots"
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server():
    with running_server([sys.executable, "-m", "uvicorn", "ranlens.app.main:app", "--host", "127.0.0.1"]) as url:
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


def open_page(browser, url: str, height: int):
    """A fresh page at a projector-like width that records uncaught script errors."""
    SCREENSHOTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    return page, errors


def _overlay_pixels(page, index: int = 0) -> str:
    return page.eval_on_selector_all("canvas.overlay", f"(cs) => cs[{index}].toDataURL()")


def test_upload_photo_see_modules_and_move_opacity(server, browser):
    page, errors = open_page(browser, server, 900)
    page.set_input_files("#file", str(PHOTOS / "chelsea.jpg"))
    page.wait_for_selector("#modules article", timeout=60_000)
    panels = page.locator("#modules article")
    assert panels.count() == 3
    assert "stage1.module1" in panels.nth(0).inner_text() and "32×32" in panels.nth(0).inner_text()
    assert "8×8" in panels.nth(2).inner_text()
    assert page.locator("#predictions li").count() == 5
    label = page.get_attribute("canvas.overlay >> nth=0", "aria-label")
    assert "stage1.module1" in label and " to " in label

    before = _overlay_pixels(page)
    page.locator("#opacity").evaluate(
        "(el) => { el.value = 10; el.dispatchEvent(new Event('input', {bubbles: true})); }")
    after = _overlay_pixels(page)
    assert page.inner_text("#opacity-out") == "10%"
    assert before != after, "moving the opacity slider did not change the overlay"

    # keyboard: focus the slider and press keys, as a presenter would
    page.focus("#opacity")
    page.keyboard.press("ArrowRight")
    assert page.inner_text("#opacity-out") == "15%"
    assert _overlay_pixels(page) != after

    page.select_option("#colormap", "jet")
    page.select_option("#scale", "shared")
    page.select_option("#reduction", "channel")
    assert page.is_enabled("#channel")
    page.screenshot(path=str(SCREENSHOTS / "upload-chelsea.jpg"), full_page=True)
    assert not errors, errors
    page.close()


def test_example_gallery_and_bad_upload_message(server, browser, tmp_path):
    page, errors = open_page(browser, server, 720)
    page.click("button.example[data-name='cifar10-ship.jpg']")
    page.wait_for_selector("#modules article", timeout=60_000)
    assert "cifar10-ship.jpg" in page.inner_text("#status")
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=30_000)
    assert "not" in page.inner_text("#status").lower()
    assert not errors, errors
    page.close()


def test_teaching_view_and_presenter_mode_by_keyboard(server, browser):
    page, errors = open_page(browser, server, 720)
    # the architecture view is drawn from the served model: exactly its three modules
    page.wait_for_selector("#arch-svg svg g.att")
    assert page.eval_on_selector_all("#arch-svg g.att", "(gs) => gs.map((g) => g.dataset.module)") == [
        "stage1.module1", "stage2.module1", "stage3.module1"]

    page.click("button.example[data-name='chelsea.jpg']")
    page.wait_for_selector("#modules article")
    page.wait_for_selector("table.ablation-table", timeout=60_000)
    headers = page.eval_on_selector_all("table.ablation-table thead th", "(ths) => ths.map((t) => t.textContent)")
    assert headers == ["class", "attention on", "all masks off", "stage1.module1 off", "stage2.module1 off",
                       "stage3.module1 off"]

    # clicking a module in the diagram opens its "look inside" view
    page.focus("#arch-svg g.att[data-module='stage2.module1']")
    page.keyboard.press("Enter")
    assert page.locator("#module-stage2-module1 details.inside").evaluate("(d) => d.open")
    assert page.locator("#module-stage2-module1 .multiples canvas").count() == 8
    assert "standard deviation" in page.inner_text("#module-stage2-module1 .hist-stats")

    page.focus("body")
    page.keyboard.press("p")
    assert page.evaluate("document.body.classList.contains('presenter')")
    shown = []
    for step in range(4):
        visible = page.eval_on_selector_all(
            "#modules article", "(as) => as.filter((a) => getComputedStyle(a).display !== 'none').map((a) => a.id)")
        assert len(visible) == 1
        shown.append(visible[0])
        page.screenshot(path=str(SCREENSHOTS / f"presenter-{step + 1}.png"))
        page.keyboard.press("ArrowRight")
    assert shown == ["module-stage2-module1", "module-stage3-module1", "module-stage1-module1",
                     "module-stage2-module1"]
    page.keyboard.press("ArrowLeft")
    assert "module 2 of 3" in page.inner_text("#presenter-pos")
    # the current image's predictions stay in view
    assert page.is_visible("#topbar") and "chelsea.jpg" in page.inner_text("#topbar-text")
    page.keyboard.press("Escape")
    assert not page.evaluate("document.body.classList.contains('presenter')")
    assert not errors, errors
    page.close()
