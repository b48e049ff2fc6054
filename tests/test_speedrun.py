"""`lmkit speedrun`: the tiny profile end to end through the real CLI (the chain guard of the
default run), a stage made to fail or regress on purpose, the report card in a real browser
(slow) and the full profile (slow)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lmkit.rag.speedrun import run_speedrun
from lmkit.rag.speedrun_card import loss_curves_svg, stage_bars_svg
from lmkit.rag.speedrun_measure import INJECT_ENV, Check, injected
from lmkit.rag.speedrun_profile import STAGES, TINY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _cli(out, *args, env=None):
    return subprocess.run([sys.executable, "-m", "lmkit", "speedrun", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speedrun") / "tiny"
    proc = _cli(out, "--tiny")
    return proc, out


def test_tiny_profile_runs_every_stage_and_writes_the_card(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speedrun (tiny) passed" in proc.stderr
    card = json.loads((out / "card.json").read_text())
    assert [s["name"] for s in card["stages"]] == list(STAGES)
    for s in card["stages"]:
        assert s["status"] == "ok", s
        assert s["seconds"] > 0 and s["peak_rss_bytes"] > 0 and s["metrics"] and s["checks"] and s["change"], s
    by = {s["name"]: s["metrics"] for s in card["stages"]}
    assert by["sft"]["sft_reply_loss"] < by["sft"]["base_reply_loss"]
    assert by["serve"]["reply"] and by["rag"]["hit@5"] >= 0.8
    assert card["decontamination"]["left_after_total"] == 0
    md, page = (out / "card.md").read_text(), (out / "card.html").read_text()
    for name in STAGES:
        assert f"| {name} | ok |" in md
    assert "Overlap between evaluation items and training data" in md and "found in the raw training data" in md
    assert page.count("<svg") == 2 and "<polyline" in page and "pretrain loss" in page
    for name in ("model-chat.q8_0.gguf", "loss_curves.svg", "stages.svg", "model-chat/config.json"):
        assert (out / name).exists(), name


def test_a_stage_that_raises_fails_the_run_with_its_name(tmp_path):
    from click.testing import CliRunner

    from lmkit.cli import cli

    r = CliRunner().invoke(cli, ["speedrun", "--tiny", "--until", "tokenizer", "--out", str(tmp_path / "run")],
                           env={INJECT_ENV: "data:raise"})
    assert r.exit_code == 1 and r.exception is not None and isinstance(r.exception, SystemExit)
    assert "stage 'data' failed" in r.output
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert [s["status"] for s in card["stages"]] == ["failed", "skipped"]
    assert "stage 'data' failed" in (tmp_path / "run" / "card.md").read_text()


def test_a_stage_that_regresses_fails_the_run_but_the_next_stages_still_run(tmp_path):
    result = run_speedrun(TINY, tmp_path, inject="data:regress", until="tokenizer", report=lambda line: None)
    assert not result.ok and [s.name for s in result.problems] == ["data"]
    assert [s.status for s in result.stages] == ["regressed", "ok"]
    assert "stage 'data' regressed" in result.summary() and "injected_regression" in result.summary()


def test_checks_injection_and_pictures():
    assert Check("hit@5", 0.9, ">=", 0.8).passed and not Check("ratio", 1.02, "<=", 1.01).passed
    assert injected("dpo", "sft,dpo:regress") == "regress" and injected("sft", "sft") == "raise"
    assert injected("rag", "") is None
    svg = loss_curves_svg({"a": [(0, 3.0), (1, 2.0)], "b": [(0, 1.0), (5, 0.5)]})
    assert svg.count("<polyline") == 2
    bars = stage_bars_svg([{"name": "x", "seconds": 1.0, "peak_rss_bytes": 2**20, "status": "ok"}])
    assert bars.count("<rect") == 2


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver")
def test_report_card_renders_in_a_real_browser(tiny_run, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    proc, out = tiny_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1600"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get((out / "card.html").as_uri())
        assert "passed" in driver.find_element(By.ID, "verdict").text
        rows = driver.find_elements(By.CSS_SELECTOR, "#stages tr")
        assert len(rows) == len(STAGES) + 1
        svgs = driver.find_elements(By.TAG_NAME, "svg")
        assert len(svgs) == 2 and all(s.size["width"] > 300 and s.size["height"] > 40 for s in svgs)
        png = tmp_path / "card.png"
        driver.save_screenshot(str(png))
        assert png.stat().st_size > 10_000
    finally:
        driver.quit()


@pytest.mark.slow
def test_full_profile_meets_every_threshold(tmp_path):
    proc = _cli(tmp_path / "full", "--profile", "full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((tmp_path / "full" / "card.json").read_text())
    assert card["total_s"] <= 1800 and card["ok"]
