"""The page at `/` in headless Chromium (Debian's chromium + chromedriver driven by Selenium) against the real
server on a tiny random pipeline: the form is filled, the generation streams (the progress bar's values are recorded
as the page sets them), the image appears with its seed and a download link, and a screenshot is saved; a ControlNet
server takes a control image uploaded through the form."""
import base64
import io
import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from pixart_jax.serving.app import create_app
from pixart_jax.serving.settings import ServerSettings
from pixart_jax.testing.server_client import wait_for
from pixart_jax.weights.lora import add_lora, save_lora
from pixart_jax.weights.transformer import load_transformer
from tests.serving.client import running
from tests.serving.stub import StubEngine

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
API_KEY = "page-test-key"
KEY_STORAGE = "pixart-jax-api-key"  # app.js's sessionStorage key
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Records every value the page gives the progress bar (its value attribute reflects the property), so a step the
# test's polling would miss is still seen.
RECORD_PROGRESS = """
window.progressSeen = [];
const bar = document.getElementById("progress");
new MutationObserver(() => window.progressSeen.push([bar.value, bar.max]))
    .observe(bar, {attributes: true, attributeFilter: ["value", "max"]});
"""


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def text_server(model_dir, tmp_path_factory):
    """With an api key and a LoRA adapter "style" (B zero: only the page's scale input matters here); no warm-up:
    the test's one request compiles its own loop."""
    adapter = str(tmp_path_factory.mktemp("page-lora") / "style")
    save_lora(add_lora(load_transformer(os.path.join(model_dir, "transformer")), rank=2), adapter)
    settings = ServerSettings(model_dir, loras=((adapter, 0.8),), api_key=API_KEY, warmup=())
    with running(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def control_server(model_dir, controlnet_dir):
    with running(create_app(ServerSettings(model_dir, controlnet=controlnet_dir, warmup=()))) as port:
        yield f"http://127.0.0.1:{port}"


def by_id(driver, element_id):
    return driver.find_element(By.ID, element_id)


def type_into(driver, element_id, text):
    field = by_id(driver, element_id)
    field.clear()
    field.send_keys(str(text))


def open_page(driver, url):
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: by_id(d, "generate").is_enabled() or by_id(d, "error").text)


def generate_and_wait(driver, timeout=240):
    """Clicks Generate and waits for the result (or an error); returns the progress values the page set."""
    driver.execute_script(RECORD_PROGRESS)
    by_id(driver, "generate").click()
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#results img.result-image") or by_id(d, "error").text)
    assert not by_id(driver, "error").text, by_id(driver, "error").text
    return driver.execute_script("return window.progressSeen")


def shown_image(driver):
    """The first result's decoded size and its downloaded PNG's bytes (read through the download link's blob)."""
    image = driver.find_element(By.CSS_SELECTOR, "#result-0 img.result-image")
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return arguments[0].complete", image))
    size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    link = driver.find_element(By.CSS_SELECTOR, "#result-0 a.download")
    b64 = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then((r) => r.arrayBuffer()).then((buffer) => {
            let text = "";
            for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
            done(btoa(text));
        });""", link.get_attribute("href"))
    return tuple(size), link.get_attribute("download"), base64.b64decode(b64)


def save_screenshot(driver, path):
    assert driver.save_screenshot(str(path))
    assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 1000
    assert min(Image.open(path).size) > 100


def test_page_generates_with_progress_and_a_download(browser, text_server, tmp_path):
    """Asks for the api key (the config answers 401 without it), then generates one image of a non-square bucket
    with a fixed seed and an adapter scale."""
    open_page(browser, text_server)
    assert by_id(browser, "api-key-row").is_displayed() and "api key" in by_id(browser, "error").text
    type_into(browser, "api-key", API_KEY + "\t")  # the change event reloads the config with the key
    WebDriverWait(browser, 30).until(lambda d: by_id(d, "generate").is_enabled())
    assert not by_id(browser, "control-section").is_displayed()
    assert by_id(browser, "lora-scale-0").get_attribute("value") == "0.8"  # the adapter's load scale
    sizes = [o.get_attribute("value") for o in Select(by_id(browser, "size")).options]
    assert sizes[0] == "256x256" and "192x320" in sizes  # the 256-px buckets, native square first
    type_into(browser, "prompt", "a small red circle")
    type_into(browser, "negative-prompt", "blurry")
    Select(by_id(browser, "size")).select_by_value("320x192")
    Select(by_id(browser, "sampler")).select_by_value("ddim")
    type_into(browser, "steps", 4)
    type_into(browser, "guidance", 3)
    by_id(browser, "random-seed").click()
    type_into(browser, "seed", 1234)
    type_into(browser, "lora-scale-0", 0.5)
    progress = generate_and_wait(browser)
    values = [value for value, _ in progress]
    assert values == sorted(values) and progress[-1] == [4, 4], progress
    assert any(0 < value < 4 for value in values), progress  # the bar moved through the steps
    size, name, png = shown_image(browser)
    assert size == (320, 192) and name == "pixart-seed-1234.png"
    assert Image.open(io.BytesIO(png)).size == (320, 192)
    caption = browser.find_element(By.CSS_SELECTOR, "#result-0 figcaption").text
    assert "Seed 1234" in caption and "ddim" in caption and "blurry" in caption and '{"style":0.5}' in caption
    assert browser.execute_script(f"return sessionStorage.getItem('{KEY_STORAGE}')") == API_KEY
    save_screenshot(browser, tmp_path / "page.png")


def test_page_uploads_a_control_image(browser, control_server, tmp_path):
    open_page(browser, control_server)
    assert by_id(browser, "control-section").is_displayed()
    modes = [o.get_attribute("value") for o in Select(by_id(browser, "control-mode")).options]
    assert modes == ["canny", "none"]  # hed needs --hed
    type_into(browser, "prompt", "a big blue square")
    type_into(browser, "steps", 2)
    by_id(browser, "generate").click()  # no control image yet: the server's error is shown
    WebDriverWait(browser, 30).until(lambda d: by_id(d, "error").text)
    assert "needs a control_image" in by_id(browser, "error").text
    edges = np.full((256, 256, 3), 30, np.uint8)
    edges[64:192, 64:192] = 230
    Image.fromarray(edges).save(tmp_path / "control.png")
    by_id(browser, "control-image").send_keys(str(tmp_path / "control.png"))
    generate_and_wait(browser)
    size, name, png = shown_image(browser)
    assert size == (256, 256) and name.startswith("pixart-seed-")
    assert "canny" in browser.find_element(By.CSS_SELECTOR, "#result-0 figcaption").text
    save_screenshot(browser, tmp_path / "control-page.png")


def test_page_waits_for_a_loading_server_and_cancels(browser):
    """On a stand-in engine: the form stays disabled while the model loads and fills in once it is up; Cancel ends
    a generation the engine has not finished."""
    loaded, engines = threading.Event(), []

    def load(settings):
        loaded.wait(30)
        engines.append(StubEngine(settings))
        engines[0].gate.clear()  # its forwards block until the test lets them go
        return engines[0]

    with running(create_app(ServerSettings("stub", warmup=()), load), ready=False) as port:
        browser.get(f"http://127.0.0.1:{port}")
        WebDriverWait(browser, 10).until(lambda d: "loading" in by_id(d, "server-info").text)
        assert not by_id(browser, "generate").is_enabled()
        loaded.set()
        WebDriverWait(browser, 30).until(lambda d: by_id(d, "generate").is_enabled())
        type_into(browser, "prompt", "a cat")
        by_id(browser, "generate").click()
        wait_for(lambda: engines[0].batches == [["a cat"]])
        by_id(browser, "cancel").click()
        WebDriverWait(browser, 10).until(lambda d: by_id(d, "error").text == "Cancelled")
        assert by_id(browser, "generate").is_enabled() and not by_id(browser, "cancel").is_displayed()
        engines[0].gate.set()
