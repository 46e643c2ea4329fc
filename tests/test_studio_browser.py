"""The studio in headless Chromium: upload a clip, type, generate on Zero-shot, export, compare on A/B."""

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
TRANSCRIPT = "This is the prompt clip."
TEXT = "Hello from a real browser."

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install -y chromium)"),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def studio_url(tiny_model_dir, tmp_path_factory, free_port):
    import torch

    from cosyvoice_onnx.studio import Studio, StudioSettings, build_app, launch_options

    torch.set_num_threads(1)
    model = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("browser-model") / "tiny")
    data = tmp_path_factory.mktemp("browser-data")
    studio = Studio(StudioSettings(model_dir=model, data_dir=data, models_dir=data / "models"))
    demo = build_app(studio)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_options(studio))
    yield url
    demo.close()


@pytest.fixture(scope="module")
def studio_page(studio_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (never `playwright install`)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(studio_url, wait_until="domcontentloaded")
        page.wait_for_selector("#zero-shot-generate")
        yield page
        browser.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_for_text(page, selector: str, text: str, timeout: float = 60_000) -> str:
    page.wait_for_function("([sel, text]) => { const el = document.querySelector(sel);"
                           " return el && el.innerText.includes(text); }", arg=[selector, text], timeout=timeout)
    return page.inner_text(selector)


# Every 20 ms, which page elements (by the nearest id) have a visible progress overlay over them.
WATCH_PROGRESS = """() => { window.progressOwners = []; window.progressMost = 0; clearInterval(window.progressTimer);
  window.progressTimer = setInterval(() => { const owners = new Set();
    for (const el of document.querySelectorAll('.progress-text, .progress-level')) {
      const box = el.getBoundingClientRect();
      if (box.width > 0 && box.height > 0) { const owner = el.closest('[id]'); owners.add(owner ? owner.id : '?'); } }
    window.progressMost = Math.max(window.progressMost, owners.size);
    for (const o of owners) if (!window.progressOwners.includes(o)) window.progressOwners.push(o); }, 20); }"""


def progress_seen(page) -> tuple[int, list[str]]:
    return page.evaluate("() => { clearInterval(window.progressTimer); return [window.progressMost, "
                         "window.progressOwners]; }")


def test_zero_shot_in_the_browser(studio_page, prompt_wav):
    studio_page.locator("#prompt-audio input[type=file]").set_input_files(str(prompt_wav))
    studio_page.fill("#prompt-transcript textarea", TRANSCRIPT)
    studio_page.fill("#studio-text textarea", TEXT)
    studio_page.get_by_role("button", name="[breath]").click()
    assert studio_page.input_value("#studio-text textarea") == TEXT + "[breath]"
    studio_page.click("#zero-shot-generate")
    summary = wait_for_text(studio_page, "#zero-shot-info", "RTF")
    assert "zero-shot" in summary and "uploaded clip (4.0 s)" in summary
    result = studio_page.locator("#zero-shot-result")
    assert result.locator("[data-testid='waveform-Result']").is_visible()
    assert ".wav" in result.locator("a[download]").get_attribute("href")
    shot(studio_page, "studio-zero-shot")


def test_streaming_draws_one_progress_bar(studio_page):
    studio_page.get_by_label("Stream").check()
    studio_page.fill("#studio-text textarea", " ".join(f"This is sentence number {i}." for i in range(5)))
    studio_page.evaluate(WATCH_PROGRESS)
    studio_page.click("#zero-shot-generate")
    studio_page.wait_for_function("() => window.progressMost > 0")
    shot(studio_page, "studio-streaming-progress")
    wait_for_text(studio_page, "#zero-shot-info", "streamed")
    most, owners = progress_seen(studio_page)
    # One bar, over the result player: not one over each of the live player, the result and the summary.
    assert (most, owners) == (1, ["zero-shot-result"])
    studio_page.get_by_label("Stream").uncheck()


def test_bad_input_shows_an_error_toast(studio_page):
    studio_page.fill("#studio-text textarea", "   ")
    studio_page.click("#zero-shot-generate")
    studio_page.get_by_text("the text to speak is empty").first.wait_for()
    studio_page.wait_for_timeout(500)  # let the toast finish sliding in before the screenshot
    shot(studio_page, "studio-error")
    studio_page.fill("#studio-text textarea", TEXT)


def test_export_then_ab_in_the_browser(studio_page):
    studio_page.get_by_role("tab", name="Models").click()
    wait_for_text(studio_page, "#model-status", "ONNX export: none usable")
    studio_page.get_by_label("Measure parity after export").uncheck()
    studio_page.evaluate(WATCH_PROGRESS)
    studio_page.click("#export-button")
    studio_page.wait_for_function("() => window.progressOwners.includes('export-log')")
    shot(studio_page, "studio-export-progress")
    wait_for_text(studio_page, "#model-status", "fp32: ready", timeout=150_000)
    most, owners = progress_seen(studio_page)
    # Visible (the log area has a height), and alone: the status refresh after it shows at most its timer.
    assert most == 1 and owners[0] == "export-log"
    studio_page.get_by_role("tab", name="A/B").click()
    studio_page.click("#ab-generate")
    report = wait_for_text(studio_page, "#ab-report", "waveform SNR", timeout=120_000)
    assert "A\ttorch" in report and "B\tonnx" in report
    for side in ("#ab-a", "#ab-b"):
        assert studio_page.locator(f"{side} a[download]").get_attribute("href").endswith(".wav")
    shot(studio_page, "studio-ab")


def test_history_table_fits_the_page(studio_page):
    studio_page.get_by_role("tab", name="History").click()
    studio_page.get_by_role("button", name="Refresh").click()
    wait_for_text(studio_page, "#history-table", "zero-shot")
    inner, outer = studio_page.evaluate("() => { const t = document.querySelector('#history-table'); "
                                        "return [t.querySelector('table').scrollWidth, t.clientWidth]; }")
    shot(studio_page, "studio-history")
    assert inner <= outer + 2, f"the history table is {inner} px wide in a {outer} px area"


def test_offline_models_tab_offers_the_tiny_model(studio_page):
    studio_page.get_by_role("tab", name="Models").click()
    studio_page.click("#make-tiny")
    wait_for_text(studio_page, "#model-status", "tiny-test-model", timeout=120_000)
    assert "random weights" in studio_page.inner_text("body")
