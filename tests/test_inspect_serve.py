"""The web page's attention panel: POST /v1/inspect/attention on a live server returns the
served model's maps (as lmkit.inspect computes them), behind the same API keys as /v1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from lmkit.inspect import attention_maps, attention_rollout  # noqa: E402
from lmkit.serve.app import create_app  # noqa: E402
from lmkit.serve.engine import Engine  # noqa: E402
from lmkit.tokenizers.bpe import BPETokenizer  # noqa: E402
from test_serve_util import LiveServer, tiny_decoder  # noqa: E402


def post(url: str, body: dict, key: str | None = "k") -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_attention_endpoint_and_panel():
    tok = BPETokenizer.train(["the cat sat on the mat. the dog ate the bone.\n" * 10], 280)
    model = tiny_decoder(vocab=tok.vocab_size)
    app = create_app(Engine(model, tok, max_batch_size=2), model_name="m", api_keys=["k"])
    prompt = "the cat sat on the mat"
    ids = torch.tensor([tok.encode(prompt)])
    maps = attention_maps(model, ids)
    with LiveServer(app) as live:
        status, rep = post(live.url + "/v1/inspect/attention", {"prompt": prompt})
        assert status == 200, rep
        assert rep["layers"] == 2 and rep["heads"] == 4 and rep["layer"] == 1 and len(rep["tokens"]) == ids.shape[1]
        assert torch.allclose(torch.tensor(rep["attention"]), maps[1][0], atol=1e-5)
        assert torch.allclose(torch.tensor(rep["mean"]), maps[1][0].mean(0), atol=1e-5)
        assert torch.allclose(torch.tensor(rep["rollout"]), attention_rollout(maps)[0], atol=1e-5)
        status, rep = post(live.url + "/v1/inspect/attention", {"prompt": prompt, "layer": 5})
        assert status == 400 and "layer 5 is out of range" in rep["error"]["message"]
        assert post(live.url + "/v1/inspect/attention", {"prompt": prompt}, key=None)[0] == 401
        with urllib.request.urlopen(live.url + "/", timeout=30) as resp:
            page = resp.read().decode()
        assert 'id="attn-show"' in page and "/v1/inspect/attention" in page


@pytest.mark.slow
def test_attention_panel_draws_in_chromium(tmp_path):
    """Headless Chromium: type a prompt, open the panel, press Show, a heatmap is drawn."""
    import shutil

    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("needs the chromium and chromium-driver packages")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tok = BPETokenizer.train(["the cat sat on the mat. the dog ate the bone.\n" * 10], 280)
    app = create_app(Engine(tiny_decoder(vocab=tok.vocab_size), tok, max_batch_size=2), model_name="m")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,900"):
        opts.add_argument(arg)
    with LiveServer(app) as live:
        browser = webdriver.Chrome(service=Service(driver_path), options=opts)
        try:
            browser.get(live.url + "/")
            browser.find_element(By.ID, "input").send_keys("the cat sat on the mat")
            browser.find_element(By.CSS_SELECTOR, "#attn summary").click()
            browser.find_element(By.ID, "attn-show").click()
            canvas_drawn = lambda d: d.find_element(By.ID, "attn-canvas").get_attribute("width") != "0"  # noqa: E731
            WebDriverWait(browser, 30).until(canvas_drawn)
            assert browser.find_element(By.ID, "error").text == ""
            browser.save_screenshot(str(tmp_path / "attention_panel.png"))
            print(f"screenshot: {tmp_path / 'attention_panel.png'}")
        finally:
            browser.quit()
