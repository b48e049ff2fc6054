"""The vision-language model on shapes scenes: answer accuracy on held-out scenes, in process, through
`lmkit serve` with the official openai client, and by transformers on the same checkpoint.

Trains the LLaVA-style model of lmkit.vision.vlm_train (stage 0: a CLIP tower on scene captions;
stage 1: projector alignment on captions; stage 2: instruction tuning on questions) and prints each
stage's time, or loads a trained folder with --model. Then, on the questions of held-out scenes
("what colour is the circle?", "what shape is red?", "how many shapes are there?"):

    lmkit      greedy answers through VisionLanguageModel.generate (lmkit.infer.generate)
    serve      `lmkit serve MODEL` in a subprocess; each question sent by the openai client as a chat
               message with the scene as an image_url data URL (base64 PNG)      (--serve-questions N)
    peer       transformers' LlavaForConditionalGeneration loaded from the same folder, greedy generate

    OMP_NUM_THREADS=1 python3 bench/bench_vlm_shapes.py -o /tmp/vlm          # train, then score all three
    OMP_NUM_THREADS=1 python3 bench/bench_vlm_shapes.py --model /tmp/vlm     # score a trained folder

Last line: "accuracy ours <a> serve <b> peer <c>  ours/peer <r>".
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import torch


def serve_accuracy(model_dir: str, scenes, qa, image_size: int, limit: int) -> tuple[float, int, float]:
    """(accuracy, questions asked, seconds) of `lmkit serve model_dir` asked through the openai client."""
    import httpx
    import openai

    from lmkit.vision.shapes import render_scene
    from lmkit.vision.vlm_chat import encode_data_url
    from lmkit.vision.vlm_train import image_message

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "lmkit", "serve", model_dir, "--port", str(port), "--model-name",
                             "vlm", "--log-level", "warning"], env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit("lmkit serve did not come up")
            time.sleep(0.5)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        urls: dict[int, str] = {}
        right, asked, t0 = 0, qa[:limit], time.perf_counter()
        for i, q, a in asked:
            if i not in urls:
                urls[i] = encode_data_url(render_scene(scenes[i], image_size))
            r = client.chat.completions.create(model="vlm", messages=[image_message(q, urls[i])], temperature=0,
                                               max_tokens=4)
            right += int((r.choices[0].message.content or "").strip() == a)
        return right / max(1, len(asked)), len(asked), time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@torch.no_grad()
def peer_accuracy(model_dir: str, model, tok, scenes, qa, batch: int = 64) -> float:
    """transformers' LlavaForConditionalGeneration on the same folder, prompts and pixels, greedy."""
    import transformers

    from lmkit.vision.shapes import scene_pixels
    from lmkit.vision.vlm_train import TEMPLATE, conversation_ids

    hf = transformers.LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    pixels = scene_pixels(scenes, model.config.vision.image_size)
    pad, eot = tok.token_to_id("<pad>"), tok.token_to_id(TEMPLATE.end_of_turn)
    right = 0
    for k in range(0, len(qa), batch):
        chunk = qa[k:k + batch]
        prompts = [conversation_ids(model, tok, q, None)[0] for _, q, _ in chunk]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels[[i for i, _, _ in chunk]],
                          max_new_tokens=4, do_sample=False, eos_token_id=eot, pad_token_id=pad)
        for row, (_, _, a) in zip(out[:, width:].tolist(), chunk):
            row = row[: row.index(eot)] if eot in row else row
            right += int(tok.decode(row).strip() == a)
    return right / max(1, len(qa))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", default=None, help="where to save the trained model (default: a temp folder)")
    ap.add_argument("--model", default=None, help="score this trained folder instead of training")
    ap.add_argument("--steps", type=int, default=1500, help="instruction-tuning steps")
    ap.add_argument("--align-steps", type=int, default=200)
    ap.add_argument("--clip-steps", type=int, default=1500)
    ap.add_argument("--scenes", type=int, default=10000)
    ap.add_argument("--test-scenes", type=int, default=200)
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--tune-vision", action="store_true")
    ap.add_argument("--serve-questions", type=int, default=0,
                    help="held-out questions asked through lmkit serve (0: all of them)")
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from lmkit.vision.shapes import make_scenes
    from lmkit.vision.vlm_hub import load_vlm_dir, save_vlm_dir
    from lmkit.vision.vlm_train import TEST_SEED_OFFSET, VLMTrainSettings, held_out_questions, qa_accuracy, train_shapes_vlm

    if args.model:
        model_dir = args.model
        model, tok = load_vlm_dir(model_dir)
    else:
        s = VLMTrainSettings(n_train=args.scenes, n_test=0, clip_steps=args.clip_steps, align_steps=args.align_steps,
                             instruct_steps=args.steps, lora_rank=args.lora_rank, tune_vision=args.tune_vision,
                             seed=args.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        model, tok, report = train_shapes_vlm(s)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"trained on {args.scenes} scenes in {total:.1f} s wall, {cpu:.1f} s CPU of this process (" +
              ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()) + "); final losses " +
              ", ".join(f"{k} {v:.3f}" for k, v in report.losses.items()), flush=True)
        model_dir = args.out or tempfile.mkdtemp(prefix="vlm-shapes-")
        save_vlm_dir(model, tok, model_dir)
        print(f"saved to {model_dir}")
    scenes = make_scenes(args.test_scenes, seed=args.seed + TEST_SEED_OFFSET)
    qa = held_out_questions(scenes)
    t0 = time.perf_counter()
    acc, kinds = qa_accuracy(model, tok, scenes)
    print(f"lmkit: {len(qa)} questions on {len(scenes)} held-out scenes, accuracy {acc:.3f} (" +
          ", ".join(f"{k} {v:.3f}" for k, v in kinds.items()) + f")  [{time.perf_counter() - t0:.1f} s]", flush=True)
    serve_acc = float("nan")
    if not args.no_serve:
        limit = args.serve_questions or len(qa)
        serve_acc, n, secs = serve_accuracy(model_dir, scenes, qa, model.config.vision.image_size, limit)
        print(f"lmkit serve + openai client (image_url data URLs): {n} questions, accuracy {serve_acc:.3f}  [{secs:.1f} s]",
              flush=True)
    peer = float("nan")
    if not args.no_peer:
        t0 = time.perf_counter()
        peer = peer_accuracy(model_dir, model, tok, scenes, qa)
        print(f"transformers LlavaForConditionalGeneration on the same folder: accuracy {peer:.3f}  "
              f"[{time.perf_counter() - t0:.1f} s]")
    print(f"accuracy ours {acc:.3f} serve {serve_acc:.3f} peer {peer:.3f}  ours/peer {acc / peer if peer else float('nan'):.3f}")


if __name__ == "__main__":
    main()
