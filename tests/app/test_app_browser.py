"""The page in a real browser (Debian's chromium, headless, driven by Selenium through Debian's chromedriver;
nothing downloads a browser): upload the sample image, paint a stroke, choose two methods, run, and see both
results. The screenshot is kept under the test's temp folder (ASUKA_APP_SCREENSHOT=PATH copies it, e.g. to
docs/app.png)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path: Path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium + chromedriver on this machine (apt-get install chromium chromium-driver): the "
                    "browser test of the app did not run")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1900"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_paint_choose_two_methods_run_in_a_real_browser(app_server, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # Gradio re-renders components after an upload or a click: every step looks its element up afresh and is
    # retried while the element it found has been replaced
    wait = WebDriverWait(browser, 120, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(app_server.url)
    def editor():  # the editor re-renders after the upload: look it up afresh each time
        return browser.find_element(By.ID, "editor")

    wait.until(lambda d: editor().find_element(By.CSS_SELECTOR, "input[type=file]"))
    wait.until(lambda d: editor().find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(
        str(REPO / "data/samples/scene_01.png")) or True)
    time.sleep(2)  # the upload replaces the example image on the canvas
    wait.until(lambda d: editor().find_element(By.CSS_SELECTOR, "button[aria-label=Brush]").is_displayed())
    wait.until(lambda d: editor().find_element(By.CSS_SELECTOR, "button[aria-label=Brush]").click() or True)

    def paint() -> bool:
        canvas = max(editor().find_elements(By.CSS_SELECTOR, "canvas"), key=lambda c: c.size["width"])
        ActionChains(browser).move_to_element_with_offset(canvas, -40, -20).click_and_hold() \
            .move_by_offset(40, 10).move_by_offset(40, 10).release().perform()
        return True

    wait.until(lambda d: paint())

    def choose(name: str, wanted: bool) -> bool:
        box = next(label for label in browser.find_elements(By.CSS_SELECTOR, "#methods label")
                   if label.text.strip() == name).find_element(By.CSS_SELECTOR, "input")
        if box.is_selected() != wanted:
            box.click()
        return True

    for name, wanted in (("ASUKA (SD-1.5)", True), ("FLUX.1-Fill", True), ("SD-1.5 inpainting", False)):
        wait.until(lambda d: choose(name, wanted))  # two methods: one SD, one FLUX (the page starts with ASUKA + SD)
    wait.until(lambda d: d.find_element(By.ID, "run").click() or True)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 2
               or "Done" in d.find_element(By.ID, "status").text
               or d.find_elements(By.CSS_SELECTOR, ".toast-body"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 2)
    shot = tmp_path / "app.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("ASUKA_APP_SCREENSHOT"):
        shutil.copy(shot, os.environ["ASUKA_APP_SCREENSHOT"])
    status = browser.find_element(By.ID, "status").text
    assert "Done: ASUKA (SD-1.5)" in status and "FLUX.1-Fill" in status
    assert not browser.find_elements(By.CSS_SELECTOR, ".toast-body")  # no error shown
    captions = " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results"))
    assert "ASUKA (SD-1.5)" in captions and "FLUX.1-Fill" in captions
    assert "tiny RANDOM demo models" in browser.find_element(By.ID, "random-banner").text
    # the painted stroke reached the server: the saved mask has a hole
    masks = sorted(app_server.out.glob("*/mask.png"), key=lambda p: p.stat().st_mtime)
    from PIL import Image
    import numpy as np

    assert (np.asarray(Image.open(masks[-1])) > 0).sum() > 100
