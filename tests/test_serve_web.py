"""The web chat page in headless Chromium: type, send, watch the streamed reply appear.

The reply must equal what `lmkit.infer.generate` produces for the same conversation (the
page sends temperature 0 by default); a second turn checks that history is sent along; an
error from the server (wrong API key) must be shown on the page. Screenshots are saved in
the test's tmp directory (printed with -s).
"""

from __future__ import annotations

import shutil

import pytest

from lmkit.hub import load_pretrained
from lmkit.infer import generate
from lmkit.serve.app import create_app
from lmkit.serve.chat_model import prepare_chat
from lmkit.serve.engine import Engine
from lmkit.tokenizers.chat_template import CHATML
from lmkit.tokenizers.loading import load_tokenizer
from test_serve_util import GREETING_REPLY, LiveServer, cached_chat_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="headless Chromium test needs the chromium and chromium-driver packages")


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    pytest.importorskip("selenium")
    d = cached_chat_dir(tmp_path_factory)
    model, tok = load_pretrained(d), load_tokenizer(d)
    app = create_app(Engine(model, tok, max_batch_size=2), model_name="tiny-chat", api_keys=["web-key"])
    with LiveServer(app) as live:
        yield live, model, tok


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,700"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _reply(model, tok, messages):
    prep = prepare_chat(model, tok, CHATML, messages)
    return generate(model, [prep.prompt_ids], max_new_tokens=256, tokenizer=tok, stop=prep.stop,
                    eos_token_id=prep.eos_ids).texts[0]


def _send(driver, text):
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "input")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


def _wait_reply(driver, n):
    """Wait until the n-th assistant bubble has finished streaming; return its text (without the meta line)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d):
        bubbles = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")
        if len(bubbles) >= n and "pending" not in bubbles[n - 1].get_attribute("class"):
            return bubbles[n - 1]
        return False

    bubble = WebDriverWait(driver, 60).until(done)
    return driver.execute_script("return arguments[0].firstChild ? arguments[0].firstChild.textContent : ''", bubble)


def test_web_chat_streams_the_reply(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    live, model, tok = page_server
    browser.get(live.url + "/")
    assert "tiny-chat" in browser.title
    browser.find_element(By.ID, "api-key").send_keys("web-key")
    _send(browser, "Say hello.")
    first = _wait_reply(browser, 1)
    assert first == GREETING_REPLY == _reply(model, tok, [{"role": "user", "content": "Say hello."}])
    # a second turn: the page sends the history, so the reply is the one for the whole conversation
    _send(browser, "What is the weather in Paris?")
    second = _wait_reply(browser, 2)
    want = _reply(model, tok, [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": first},
                               {"role": "user", "content": "What is the weather in Paris?"}])
    assert second == want
    assert browser.find_element(By.ID, "error").text == ""
    shot = tmp_path / "web_chat.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
    print(f"screenshot: {shot}")
    # errors are shown, and the failed turn is not kept
    key = browser.find_element(By.ID, "api-key")
    key.clear()
    key.send_keys("wrong")
    _send(browser, "Say hello.")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert "API key" in browser.find_element(By.ID, "error").text
    browser.save_screenshot(str(tmp_path / "web_chat_error.png"))
