"""Does the README's SFT step give a model that ends its turn? (issue 26's acceptance bullet)

Follows README.md's "life of a model" with its default settings, on the command line:

    lmkit quickstart --out DIR [--steps N]
    lmkit finetune DIR/model DIR/chat_train.jsonl --method lora -o DIR/lora
    lmkit merge DIR/model DIR/lora -o DIR/chat

where chat_train.jsonl is DIR/chat.jsonl without every `--every`-th row; those rows are the
held-out chat prompts (finetune holds out its own eval split from chat_train.jsonl as usual).
On the held-out prompts, with greedy decoding and `--max-tokens` (chat's default 256), it
measures the share of replies that end with <|im_end|> before the limit in

  (a) `lmkit chat DIR/chat --temperature 0` driven through stdin (one /reset per prompt): it
      prints no special tokens, so a reply whose text is (b)'s for the same prompt stopped on
      (b)'s token; any other reply, on the greedy next token after prompt + re-encoded reply;
  (b) `lmkit generate DIR/chat -p - --json` on the ChatML prompt (the same text `chat` renders):
      the last token when finish_reason is "stop";
  (c) transformers: AutoModelForCausalLM.generate on DIR/chat with the prompt from the
      tokenizer's own chat_template and the checkpoint's generation_config (its eos list);

and P(<|im_end|>) right after each held-out reference reply (teacher-forced). Each surface
reports two shares: replies that stop before the limit (on any of the checkpoint's eos ids,
<|endoftext|> included) and replies that end with <|im_end|> (the acceptance figure).

    python3 bench/bench_sft_end_of_turn.py [--steps 1200] [--out DIR] [--every 6] [--max-tokens 256]

Last line: `ours/peer: X` = the lowest of the three <|im_end|> shares / 0.9 (the target; >= 1 passes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TARGET = 0.9


def lmkit(*args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "lmkit.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"lmkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def split_chat(out: Path, every: int) -> tuple[Path, list[list[dict]]]:
    """chat.jsonl -> chat_train.jsonl (the finetune data) + the held-out conversations."""
    rows = [json.loads(line) for line in (out / "chat.jsonl").read_text().splitlines() if line.strip()]
    held = [r["messages"] for i, r in enumerate(rows) if i % every == every - 1]
    train = [r for i, r in enumerate(rows) if i % every != every - 1]
    path = out / "chat_train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train))
    return path, held


def via_chat(model: Path, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy replies of `lmkit chat` (the text it prints; special tokens are never printed)."""
    stdin = "".join(f"{p}\n/reset\n" for p in prompts) + "/exit\n"
    out = lmkit("chat", str(model), "--temperature", "0", "--max-tokens", str(max_tokens), stdin=stdin)
    replies = out.split("\n")[:-1]
    if len(replies) != len(prompts):  # a reply with a newline in it: one process per prompt
        replies = [lmkit("chat", str(model), "--temperature", "0", "--max-tokens", str(max_tokens),
                         stdin=f"{p}\n/exit\n")[:-1] for p in prompts]
    return replies


def chat_endings(model, tok, template, prompts: list[str], replies: list[str], max_tokens: int,
                 eos_ids: list[int], generated: list[tuple[str, int | None]]) -> list[int | None]:
    """The token each chat reply stopped on (None: it reached max_tokens). A reply whose text
    is `lmkit generate`'s for the same prompt (greedy, same prompt ids, same eos ids) stopped
    on the same token; otherwise the greedy next token after prompt + the re-encoded reply
    (re-encoding can differ from the generated tokens, so this is the fallback)."""
    import torch

    ends = []
    for p, r, (g_text, g_end) in zip(prompts, replies, generated):
        if r == g_text:
            ends.append(g_end)
            continue
        prompt, _ = template.render_with_mask([{"role": "user", "content": p}], tok, add_generation_prompt=True)
        reply = tok.encode(r)
        if len(reply) >= max_tokens:
            ends.append(None)
            continue
        with torch.no_grad():
            nxt = int(model(torch.tensor([prompt + reply])).logits[0, -1].argmax())
        ends.append(nxt if nxt in eos_ids else None)
    return ends


def via_generate(model: Path, prompts: list[str], max_tokens: int, template) -> list[tuple[str, int | None]]:
    """(text, the token it stopped on) of each `lmkit generate --json` reply (None: it reached the limit)."""
    ends = []
    for p in prompts:
        text = template.render([{"role": "user", "content": p}], add_generation_prompt=True)
        res = json.loads(lmkit("generate", str(model), "-p", "-", "--json", "--max-new-tokens", str(max_tokens),
                               stdin=text))
        ends.append((res["text"], res["tokens"][-1] if res["finish_reason"] == "stop" and res["tokens"] else None))
    return ends


def via_transformers(model_dir: Path, held: list[list[dict]], max_tokens: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    print(f"transformers generation_config: eos_token_id={model.generation_config.eos_token_id} "
          f"pad_token_id={model.generation_config.pad_token_id}")
    eos_ids = model.generation_config.eos_token_id
    eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]
    ends, lengths = [], []
    for k, conv in enumerate(held):
        ids = tok.apply_chat_template(conv[:1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        lengths.append(len(new))
        if k == 0:
            print(f"example: {conv[0]['content']!r} -> {tok.decode(new)!r}")
        ends.append(new[-1] if new and new[-1] in eos_ids else None)
    return model, ends, lengths


def p_end_of_turn(model, tokenizer, template, held: list[list[dict]], eot: int) -> list[float]:
    """P(<|im_end|>) right after each held-out reference reply, teacher-forced."""
    import torch

    probs = []
    for conv in held:
        ids, mask = template.render_with_mask(conv[:2], tokenizer)
        pos = max(i for i, (t, m) in enumerate(zip(ids, mask)) if m and t == eot)
        with torch.no_grad():
            logits = model(torch.tensor([ids[:pos]])).logits[0, -1].float()
        probs.append(torch.softmax(logits, -1)[eot].item())
    return probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="quickstart steps (default: the README's)")
    ap.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="keep DIR/model, DIR/chat if they exist")
    ap.add_argument("--every", type=int, default=6, help="hold out every N-th row of chat.jsonl")
    ap.add_argument("--max-tokens", type=int, default=256, help="reply limit (lmkit chat's default)")
    args = ap.parse_args()

    sys.path.insert(0, str(SRC))
    from lmkit.tokenizers.loading import load_tokenizer
    from lmkit.tokenizers.chat_template import CHATML

    out = args.out or Path(tempfile.mkdtemp(prefix="lmkit-eot-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (args.reuse and (out / "model" / "config.json").exists()):
        lmkit("quickstart", "--out", str(out), *(["--steps", str(args.steps)] if args.steps else []))
    t_qs = time.perf_counter() - t0
    train, held = split_chat(out, args.every)
    t0 = time.perf_counter()
    if not (args.reuse and (out / "chat" / "config.json").exists()):
        lmkit("finetune", str(out / "model"), str(train), "--method", "lora", "-o", str(out / "lora"))
        lmkit("merge", str(out / "model"), str(out / "lora"), "-o", str(out / "chat"))
    t_ft = time.perf_counter() - t0
    print(f"quickstart --steps {args.steps or 'default'}: {t_qs:.0f} s; finetune (defaults) + merge: {t_ft:.0f} s; "
          f"{len(held)} held-out prompts, greedy, max {args.max_tokens} tokens; folder {out}")

    tok = load_tokenizer(out / "chat")
    eot = tok.token_to_id(CHATML.end_of_turn)
    prompts = [conv[0]["content"] for conv in held]
    replies = via_chat(out / "chat", prompts, args.max_tokens)
    generated = via_generate(out / "chat", prompts, args.max_tokens, CHATML)
    ends = {"lmkit generate": [end for _, end in generated]}
    model, ends["transformers.generate"], lengths = via_transformers(out / "chat", held, args.max_tokens)
    eos_ids = model.generation_config.eos_token_id
    eos_ids = [int(e) for e in (eos_ids if isinstance(eos_ids, list) else [eos_ids])]
    chat_ends = chat_endings(model, tok, CHATML, prompts, replies, args.max_tokens, eos_ids, generated)
    ends = {"lmkit chat": chat_ends, **ends}
    probs = p_end_of_turn(model, tok, CHATML, held, eot)

    n = len(held)
    shares = {}
    for name, e in ends.items():
        stopped = sum(x is not None for x in e)
        shares[name] = sum(x == eot for x in e) / n
        print(f"{name:22s} stops before max_tokens {stopped}/{n} = {stopped / n:.0%}; "
              f"ends with <|im_end|> {sum(x == eot for x in e)}/{n} = {shares[name]:.0%}")
    same = sum(r == g for r, (g, _) in zip(replies, generated))
    print(f"lmkit chat printed the same text as lmkit generate for {same}/{n} prompts")
    print(f"transformers reply length: mean {sum(lengths) / n:.0f}, max {max(lengths)} tokens")
    probs_sorted = sorted(probs)
    print(f"P(<|im_end|>) after held-out replies: mean {sum(probs) / n:.3f}, "
          f"median {probs_sorted[n // 2]:.3f}, min {probs_sorted[0]:.3f}")
    print(f"ours/peer: {min(shares.values()) / TARGET:.2f}")


if __name__ == "__main__":
    main()
