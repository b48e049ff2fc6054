"""`lmkit quickstart`, run as a user would: a subprocess, no arguments beyond a short run."""

import re
import subprocess
import sys

from lmkit.hub import load_pretrained


def test_quickstart_end_to_end(tmp_path):
    out_dir = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "lmkit", "quickstart", "--out", str(out_dir), "--steps", "30", "--vocab-size", "600"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in text
    assert "validation perplexity" in text and "unigram baseline" in text
    assert "Next, try:" in text and "lmkit generate" in text
    model = load_pretrained(out_dir / "model")
    assert model.config.model_type == "llama" and model.config.vocab_size == 600
    assert (out_dir / "model" / "tokenizer.json").exists()
    assert (out_dir / "run" / "metrics.jsonl").exists()
    # stdout and stderr are files here, not terminals: a few progress lines, no bar redraws
    written = [line for line in re.split(r"[\r\n]", proc.stdout + proc.stderr) if line.strip()]
    assert len(written) <= 100, written[:20]
