"""The app in a real browser (Debian chromium driven by playwright), through every tab.

Upload a generated clip, move a slider, click a patch to mask it, classify, build an index and
query it, train a tiny model, switch models; two sessions at once; the start-up message when
the bundled demo model is missing. Screenshots go to ``test-output/browser/``; with
``CAVMAE_UPDATE_SCREENSHOTS=1`` one per tab is copied to ``docs/screenshots/``.
``CAVMAE_SCREENSHOT_MODELS=demo`` (the bundled models) or ``=DIR`` (a folder with
``pretrain.safetensors`` and ``classifier.safetensors``) uses those models and full-size clips
instead of the tiny test models, for documentation screenshots::

    CAVMAE_SCREENSHOT_MODELS=demo CAVMAE_UPDATE_SCREENSHOTS=1 python -m pytest tests/browser
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A synthetic camera and microphone for the webcam test (no permission prompt).
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test-output" / "browser"
DOCS = ROOT / "docs" / "screenshots"
DOC_TABS = ("reconstruct", "similarity", "classify", "retrieve", "train", "model")  # one per tab
TIMEOUT_MS = 120_000  # generous: CI machines may be busy

if not CHROMIUM.exists():
    pytest.skip(
        "/usr/bin/chromium is absent (apt-get install -y chromium)", allow_module_level=True
    )
playwright = pytest.importorskip("playwright.sync_api")
sys.path.insert(0, str(ROOT / "tests" / "app"))
from app_testkit import make_tiny_models, write_clips  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(settings):  # -> (demo, url)
    from app.services import Services
    from app.ui import build_demo, launch_kwargs

    services = Services.create(settings)
    services.preload()
    demo = build_demo(services, settings)
    demo.queue(max_size=settings.queue_size)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(settings))
    return demo, f"http://127.0.0.1:{settings.port}/"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("browser")
    custom = os.environ.get("CAVMAE_SCREENSHOT_MODELS")
    if custom == "demo":  # the bundled models
        from cavmae import zoo

        pt, ft = zoo.BUNDLED["demo-pretrain"], zoo.BUNDLED["demo"]
    elif custom:
        pt, ft = Path(custom) / "pretrain.safetensors", Path(custom) / "classifier.safetensors"
    else:
        pt, ft = make_tiny_models(root / "models")
    size = 224 if custom else 64  # full-size frames for documentation screenshots
    write_clips(root / "samples", n=3, duration_s=4.0, size=size)
    library = write_clips(root / "library", n=4, duration_s=3.0, seed=5, classes=True, size=size)
    upload = write_clips(
        root / "upload", n=1, duration_s=10.0 if custom else 5.0, seed=9, size=size
    )[0]
    return {
        "pt": pt,
        "ft": ft,
        "samples": root / "samples",
        "library": root / "library",
        "upload": upload,
        "runs": root / "runs",
        "work": root / "work",
        "n_library": Path(str(len(library))),
    }


@pytest.fixture(scope="module")
def app_url(files: dict[str, Path]) -> Iterator[str]:
    from app.settings import AppSettings

    settings = AppSettings(
        model=str(files["ft"]),
        pretrain=str(files["pt"]),
        samples_dir=files["samples"],
        runs_dir=files["runs"],
        work_dir=files["work"],
        port=_free_port(),
        allowed_paths=(files["library"],),
    )
    demo, url = _launch(settings)
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _page(browser: object, url: str):  # -> Page
    page = browser.new_page(viewport={"width": 1440, "height": 1000})  # type: ignore[attr-defined]
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#cav-tabs")
    return page


def _shot(page, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("CAVMAE_UPDATE_SCREENSHOTS") == "1" and name in DOC_TABS:
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / f"{name}.png")
    return path


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def _wait_text(page, selector: str, needle: str) -> None:
    page.wait_for_function(
        "([sel, needle]) => { const e = document.querySelector(sel); return e && e.innerText.includes(needle); }",
        arg=[selector, needle],
    )


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_every_tab(browser: object, app_url: str, files: dict[str, Path]) -> None:
    page = _page(browser, app_url)
    # The first sample opens and is reconstructed on its own.
    _wait_text(page, "#rec-summary", "patches masked")
    # Upload a generated clip: it replaces the sample and is reconstructed.
    page.locator("#clip-upload input[type=file]").set_input_files(str(files["upload"]))
    _wait_text(page, "#clip-info", files["upload"].name)
    _wait_text(page, "#clip-info", " s · video")
    # Move the audio slider: 25 % -> the summary follows without a reload.
    _set_slider(page, "ratio-a", 25)
    _wait_text(page, "#rec-summary", "(random)")
    summary = _text(page, "#rec-summary")
    # Click a patch of the masked spectrogram: it becomes a hand-drawn mask.
    img = page.locator("#spec-masked img")
    img.wait_for()
    bb = img.bounding_box()
    page.mouse.click(
        bb["x"] + bb["width"] * 0.1, bb["y"] + bb["height"] * 0.55
    )  # inside the letterbox
    _wait_text(page, "#rec-summary", "(by hand)")
    assert _text(page, "#rec-summary") != summary
    frame = page.locator("#frame-masked img")
    fb = frame.bounding_box()
    page.mouse.click(fb["x"] + fb["width"] * 0.5, fb["y"] + fb["height"] * 0.5)
    page.wait_for_timeout(500)
    page.locator("#render-audio").click()
    _wait_text(page, "#audio-status", "Audio rendered")
    _shot(page, "reconstruct")

    _tab(page, "Similarity")
    page.locator("#sim-sound").click()
    _wait_text(page, "#sim-sound-text", "cosine from")
    page.locator("#sim-method").get_by_text("occlusion", exact=True).click()  # re-renders the map
    page.locator("#sim-method input[value=occlusion]").wait_for(state="attached")
    assert page.locator("#sim-method input[value=occlusion]").is_checked()
    page.locator("#sim-sound").click()  # and the button uses the chosen map
    _wait_text(page, "#sim-sound-text", "left out")
    page.locator("#sim-attention").click()
    _wait_text(page, "#sim-attn-text", "attention")
    page.locator("#sim-temporal").click()
    _wait_text(page, "#sim-temporal-text", "window")
    page.locator("#sim-contrast").click()
    _wait_text(page, "#sim-contrast-text", "Matched pair")
    _shot(page, "similarity")

    _tab(page, "Classify")
    page.locator("#cls-run").click()
    _wait_text(page, "#cls-mode-text", "Mode")
    page.locator("#cls-bars .js-plotly-plot").wait_for()
    page.get_by_text("Timeline over the whole file").click()
    page.locator("#cls-timeline-run").click()
    _wait_text(page, "#cls-timeline-text", "window")
    _shot(page, "classify")

    _tab(page, "Retrieve")
    page.locator("#ret-source").get_by_text("Folder").click()
    page.locator("#ret-folder textarea, #ret-folder input").first.fill(str(files["library"]))
    page.locator("#ret-build").click()
    _wait_text(page, "#ret-index-status", f"{files['n_library']} items")
    page.locator("#ret-query input[type=file]").set_input_files(str(files["upload"]))
    page.wait_for_timeout(500)
    page.locator("#ret-search").click()
    _wait_text(page, "#ret-search-status", "results")
    page.locator("#ret-gallery button.thumbnail-item").first.click()
    page.wait_for_selector("#ret-player video")
    page.get_by_text("Evaluate retrieval on the indexed folder").click()
    page.locator("#ret-eval").click()
    _wait_text(page, "#ret-eval-text", "clips with audio and video")
    _shot(page, "retrieve")

    _tab(page, "Train")
    page.locator("#train-synthetic-n input").fill("16")
    docs = bool(os.environ.get("CAVMAE_SCREENSHOT_MODELS"))
    page.locator("#train-epochs input").fill("4" if docs else "1")  # curves for the docs
    page.locator("#train-name input, #train-name textarea").first.fill("browser-run")
    page.locator("#train-start").click()
    _wait_text(page, "#train-status", "browser-run")
    page.wait_for_function(
        "() => document.querySelector('#train-status').innerText.includes('finished')",
        timeout=240_000,
    )
    page.locator("#train-loss .js-plotly-plot").wait_for()
    _shot(page, "train")
    page.locator("#train-use").click()
    _wait_text(page, "#model-status", "browser-run")

    _tab(page, "Model")
    _wait_text(page, "#model-overview", "Parameters")
    _shot(page, "model")
    page.close()


def test_two_sessions_at_once(browser: object, app_url: str) -> None:
    a, b = _page(browser, app_url), _page(browser, app_url)
    for page in (a, b):
        _wait_text(page, "#rec-summary", "patches masked")
    before_a, before_b = _text(a, "#rec-summary"), _text(b, "#rec-summary")
    _set_slider(a, "ratio-a", 10)
    _set_slider(b, "ratio-a", 90)
    for page, before in ((a, before_a), (b, before_b)):
        page.wait_for_function(
            "(before) => document.querySelector('#rec-summary').innerText !== before", arg=before
        )
    audio_a = _text(a, "#rec-summary").split("·")[0]
    audio_b = _text(b, "#rec-summary").split("·")[0]
    assert audio_a != audio_b  # each session follows its own slider
    b.locator("#sample-dropdown input").click()
    b.get_by_role("option", name="clip2.mp4").click()
    _wait_text(b, "#clip-info", "clip2.mp4")
    assert "clip2.mp4" not in _text(a, "#clip-info")
    a.close()
    b.close()


def test_webcam_recording(browser: object, app_url: str) -> None:
    """Record two seconds from chromium's fake camera and microphone; the clip is used."""
    context = browser.new_context(
        viewport={"width": 1440, "height": 1000},  # type: ignore[attr-defined]
        permissions=["camera", "microphone"],
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url)
    _wait_text(page, "#rec-summary", "patches masked")
    page.get_by_text("…or record with the webcam and microphone").click()
    page.get_by_text("Click to Access Webcam").click()
    page.locator("#webcam button[aria-label='start recording']").click()
    page.wait_for_timeout(2000)
    page.locator("#webcam button[aria-label*='recording']").first.click()
    _wait_text(page, "#clip-info", "recording_")
    info = _text(page, "#clip-info")
    assert "fps" in info and "audio" in info and "no audio track" not in info
    _wait_text(page, "#rec-summary", "patches masked")
    _shot(page, "webcam")
    context.close()


def test_missing_demo_model_shows_a_message(
    browser: object, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import AppSettings
    from cavmae import zoo

    monkeypatch.setitem(zoo.BUNDLED, "demo", tmp_path / "missing" / "cavmae-demo.safetensors")
    settings = AppSettings(
        model="demo",
        samples_dir=files["samples"],
        runs_dir=tmp_path / "runs",
        work_dir=tmp_path / "work",
        port=_free_port(),
    )
    demo, url = _launch(settings)
    try:
        page = _page(browser, url)
        _wait_text(page, "#model-status", "could not be loaded")
        page.locator("#model-source").get_by_text("Local file").click()
        page.locator("#model-path input, #model-path textarea").first.fill(str(files["ft"]))
        page.get_by_text("Optional: a second checkpoint, labels").click()
        page.locator("#model-pretrain input, #model-pretrain textarea").first.fill(str(files["pt"]))
        page.locator("#model-load").click()
        _wait_text(page, "#model-status", "Using")
        _wait_text(page, "#model-overview", "Parameters")
        _shot(page, "missing-demo-then-loaded")
        page.close()
    finally:
        demo.close()
