"""Training the vision-language model on synthetic shapes scenes, LLaVA's way, and scoring its answers.

    stage 0  vision tower: a small CLIP trained contrastively on (scene, caption) pairs
             (vision/clip_train.py); LLaVA starts from a pretrained CLIP, here there is none to download
    stage 1  projector alignment: the tower and the decoder frozen, only the projector trains, on
             "<image> describe the image." -> the scene's caption
    stage 2  instruction tuning: the projector and the decoder (all of it, or LoRA adapters through
             lmkit.peft, merged at the end) train on "<image> what colour is the circle?" -> "red"

Every example is a ChatML conversation rendered by `vlm_chat.encode_vlm_chat` (the layout the
server renders); the loss falls on the assistant's reply and its end-of-turn token only. The
tower is frozen after stage 0, so its hidden states are computed once per image and reused.
Answers are scored by greedy generation through `VisionLanguageModel.generate` (lmkit's decode
loop) on scenes held out from training (another seed of `shapes.make_scenes`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lmkit.models.config import ModelConfig
from lmkit.progress import Progress
from lmkit.tokenizers.chat_template import CHATML
from lmkit.tokenizers.simple import WhitespaceTokenizer
from lmkit.vision.clip import CLIP, CLIPConfig, clip_vision_config
from lmkit.vision.clip_digits import tokenize
from lmkit.vision.clip_text import CLIPTextConfig
from lmkit.vision.clip_train import denormals_flushed, train_clip, warmup_cosine
from lmkit.vision.shapes import Scene, caption_words, make_scenes, scene_pixels
from lmkit.vision.vlm import VisionLanguageModel, VLMConfig
from lmkit.vision.vlm_chat import IMAGE_TOKEN, encode_vlm_chat

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN)
DESCRIBE = "describe the image."
TEMPLATE = CHATML
CAPTION_LEN = 12
TEST_SEED_OFFSET = 1000  # held-out scenes: make_scenes(n, seed + TEST_SEED_OFFSET)
IMAGE_URL = "shapes-scene"  # the placeholder url of a training image (the pixels come from the scene)


def shapes_tokenizer() -> WhitespaceTokenizer:
    """Word-level vocabulary: every caption/question/answer word, the ChatML roles and default system
    prompt, the alignment instruction, and the special tokens (ChatML's, `<image>`)."""
    texts = [" ".join(caption_words()), "system user assistant", TEMPLATE.default_system or "", DESCRIBE]
    return WhitespaceTokenizer.train(texts, special_tokens=SPECIALS, unk_token="<unk>")


@dataclass
class VLMTrainSettings:
    image_size: int = 32
    patch_size: int = 8
    d_model: int = 64
    layers: int = 2
    n_train: int = 10000  # training scenes
    n_test: int = 200  # held-out scenes
    clip_steps: int = 1500  # fewer leave the tower blind to shape (300 steps: shape answers at chance)
    align_steps: int = 200
    instruct_steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    lora_rank: int = 0  # > 0: stage 2 trains LoRA adapters of this rank instead of the whole decoder
    tune_vision: bool = False  # stage 2 trains the vision tower too (LLaVA keeps it frozen)
    seed: int = 0

    def __post_init__(self) -> None:
        from lmkit.errors import ConfigError

        for name in ("image_size", "patch_size", "d_model", "layers", "n_train", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"VLMTrainSettings.{name}={getattr(self, name)}: must be >= 1")
        for name in ("n_test", "clip_steps", "align_steps", "instruct_steps", "lora_rank"):
            if getattr(self, name) < 0:
                raise ConfigError(f"VLMTrainSettings.{name}={getattr(self, name)}: must be >= 0")


@dataclass
class VLMTrainReport:
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    losses: dict[str, float] = field(default_factory=dict)  # final loss per stage
    accuracy: float | None = None  # held-out question accuracy
    by_kind: dict[str, float] = field(default_factory=dict)


def shapes_clip(tok: WhitespaceTokenizer, s: VLMTrainSettings) -> CLIP:
    heads = max(1, s.d_model // 16)
    torch.manual_seed(s.seed)
    return CLIP(CLIPConfig(
        vision=clip_vision_config(image_size=s.image_size, patch_size=s.patch_size, num_channels=3,
                                  d_model=s.d_model, n_layers=s.layers, n_heads=heads, d_ff=4 * s.d_model),
        text=CLIPTextConfig(vocab_size=tok.vocab_size, max_seq_len=CAPTION_LEN, d_model=s.d_model,
                            n_layers=s.layers, n_heads=heads, d_ff=4 * s.d_model, eos_token_id=tok.token_to_id("</s>"),
                            pad_token_id=tok.token_to_id("<pad>"), bos_token_id=tok.token_to_id("<s>")),
        projection_dim=s.d_model))


def shapes_vlm(tok: WhitespaceTokenizer, s: VLMTrainSettings, vision=None) -> VisionLanguageModel:
    """A small LLaVA: a CLIP-layout tower (`vision`: a ViTConfig, default from the settings), a Llama decoder."""
    heads = max(1, s.d_model // 16)
    if vision is None:
        vision = clip_vision_config(image_size=s.image_size, patch_size=s.patch_size, num_channels=3,
                                    d_model=s.d_model, n_layers=s.layers, n_heads=heads, d_ff=4 * s.d_model)
    text = ModelConfig(arch="decoder", model_type="llama", vocab_size=tok.vocab_size, d_model=s.d_model,
                       n_layers=s.layers, n_heads=heads, n_kv_heads=max(1, heads // 2), d_ff=2 * s.d_model,
                       max_seq_len=128, norm="rmsnorm", norm_eps=1e-5, activation="silu", gated_ffn=True,
                       position="rope", tie_embeddings=False, bos_token_id=tok.token_to_id("<s>"),
                       eos_token_id=tok.token_to_id("<|im_end|>"), pad_token_id=tok.token_to_id("<pad>"))
    torch.manual_seed(s.seed)
    return VisionLanguageModel(VLMConfig(vision=vision, text=text, image_token_id=tok.token_to_id(IMAGE_TOKEN)))


def image_message(text: str, url: str = IMAGE_URL) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}


def conversation_ids(model: VisionLanguageModel, tok, question: str, answer: str | None) -> tuple[list[int], list[int]]:
    """One image + question (+ the assistant's answer when training) -> (ids, loss mask)."""
    msgs = [image_message(question)] + ([{"role": "assistant", "content": answer}] if answer is not None else [])
    ids, mask, _ = encode_vlm_chat(tok, TEMPLATE, msgs, model.config.image_token_id, model.config.n_image_tokens,
                                   add_generation_prompt=answer is None)
    return ids, mask


def _examples(model, tok, scenes: list[Scene], stage: str) -> list[tuple[int, list[int], list[int]]]:
    out = []
    for i, scene in enumerate(scenes):
        pairs = [(DESCRIBE, scene.caption())] if stage == "align" else scene.questions()
        for q, a in pairs:
            ids, mask = conversation_ids(model, tok, q, a)
            out.append((i, ids, mask))
    return out


def _batch(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (scene indices [B], ids [B, T] right-padded, attention mask, labels (-100 off the replies))."""
    t = max(len(e[1]) for e in examples)
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (_, row, mask) in enumerate(examples):
        ids[r, : len(row)] = torch.tensor(row)
        attn[r, : len(row)] = 1
        m = torch.tensor(mask, dtype=torch.bool)
        labels[r, : len(row)] = torch.where(m, torch.tensor(row), torch.tensor(-100))
    return torch.tensor([e[0] for e in examples]), ids, attn, labels


def train_stage(model: VisionLanguageModel, params: list[torch.nn.Parameter], images, examples,
                pad_id: int, *, steps: int, batch_size: int, lr: float, seed: int, desc: str,
                progress=None) -> float:
    """AdamW (cosine decay after a short warm-up) on `params` over random batches of `examples`;
    images(scene indices) gives their image embeddings. -> the final loss."""
    if steps == 0 or not examples:
        return float("nan")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = min(50, max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: warmup_cosine(k, warmup, steps))
    model.train()
    loss = torch.tensor(float("nan"))
    bar = Progress(total=steps, desc=desc, unit="step", progress=progress)
    for _ in bar.track(range(steps)):
        pick = torch.randperm(len(examples), generator=g)[:batch_size].tolist()
        scene_idx, ids, attn, labels = _batch([examples[i] for i in pick], pad_id)
        embeds = images(scene_idx)
        loss = model(ids, attention_mask=attn, labels=labels, image_embeds=embeds).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=round(loss.item(), 3))
    model.eval()
    return float(loss.detach())


@torch.no_grad()
def vision_states(model: VisionLanguageModel, pixels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model.vision_states(pixels[i:i + chunk]) for i in range(0, pixels.shape[0], chunk)])


def train_shapes_vlm(s: VLMTrainSettings, progress=None) -> tuple[VisionLanguageModel, WhitespaceTokenizer, VLMTrainReport]:
    """Stages 0-2 on make_scenes(n_train, seed); the held-out accuracy on make_scenes(n_test, seed + 1000)."""
    report = VLMTrainReport()
    tok = shapes_tokenizer()
    pad = tok.token_to_id("<pad>")
    scenes = make_scenes(s.n_train, seed=s.seed)
    pixels = scene_pixels(scenes, s.image_size)
    with denormals_flushed():
        t0 = time.perf_counter()
        clip = shapes_clip(tok, s)
        if s.clip_steps:
            ids, mask = tokenize(tok, [sc.caption() for sc in scenes], CAPTION_LEN)
            r = train_clip(clip, pixels, ids, mask, steps=s.clip_steps, batch_size=min(128, s.n_train), lr=3e-3,
                           seed=s.seed, progress=progress, flush_denormals=False)
            report.losses["clip"] = r.final_loss
        report.seconds["clip"] = time.perf_counter() - t0

        model = shapes_vlm(tok, s, vision=clip.config.vision)
        model.vision.load_state_dict(clip.vision.state_dict())
        for p in model.vision.parameters():
            p.requires_grad_(False)
        states = vision_states(model, pixels)  # the tower is frozen: its hidden states once per image

        t0 = time.perf_counter()
        for p in model.language.parameters():
            p.requires_grad_(False)
        report.losses["align"] = train_stage(
            model, list(model.projector.parameters()), lambda idx: model.projector(states[idx]),
            _examples(model, tok, scenes, "align"), pad,
            steps=s.align_steps, batch_size=s.batch_size, lr=s.lr, seed=s.seed, desc="vlm align", progress=progress)
        report.seconds["align"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if s.lora_rank:
            from lmkit.peft.lora import LoraConfig, inject_lora

            inject_lora(model.language, LoraConfig(r=s.lora_rank, alpha=2 * s.lora_rank, target_modules=(
                "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")))
        else:
            for p in model.language.parameters():
                p.requires_grad_(True)
        params = [p for p in model.projector.parameters()] + [p for p in model.language.parameters() if p.requires_grad]
        if s.tune_vision:
            for p in model.vision.parameters():
                p.requires_grad_(True)
            params += list(model.vision.parameters())
            images = lambda idx: model.image_features(pixels[idx])  # noqa: E731
        else:
            images = lambda idx: model.projector(states[idx])  # noqa: E731
        report.losses["instruct"] = train_stage(
            model, params, images, _examples(model, tok, scenes, "instruct"), pad, steps=s.instruct_steps,
            batch_size=s.batch_size, lr=s.lr, seed=s.seed + 1, desc="vlm instruct", progress=progress)
        if s.lora_rank:
            from lmkit.peft.lora import unload_lora

            unload_lora(model.language, merge=True)
        report.seconds["instruct"] = time.perf_counter() - t0
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    if s.n_test:
        t0 = time.perf_counter()
        report.accuracy, report.by_kind = qa_accuracy(model, tok, make_scenes(s.n_test, seed=s.seed + TEST_SEED_OFFSET))
        report.seconds["eval"] = time.perf_counter() - t0
    return model, tok, report


def question_kind(question: str) -> str:
    return "count" if question.startswith("how many") else "colour" if "colour" in question else "shape"


def held_out_questions(scenes: list[Scene]) -> list[tuple[int, str, str]]:
    """(scene index, question, answer) for every question of every scene."""
    return [(i, q, a) for i, sc in enumerate(scenes) for q, a in sc.questions()]


@torch.no_grad()
def answer(model: VisionLanguageModel, tok, pixels: torch.Tensor, questions: list[str], max_new_tokens: int = 4) -> list[str]:
    """Greedy answers, one per (image pixels[i], questions[i]), through `model.generate`."""
    prompts = [conversation_ids(model, tok, q, None)[0] for q in questions]
    eos = [tok.token_to_id(TEMPLATE.end_of_turn)]
    out = model.generate(prompts, pixels, tokenizer=tok, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos)
    return [t.strip() for t in out.texts]


@torch.no_grad()
def qa_accuracy(model: VisionLanguageModel, tok, scenes: list[Scene], batch_size: int = 128) -> tuple[float, dict[str, float]]:
    """Exact-answer accuracy over every question of `scenes`, overall and per kind (count, colour, shape)."""
    qa = held_out_questions(scenes)
    pixels = scene_pixels(scenes, model.config.vision.image_size)
    right: dict[str, list[int]] = {}
    for i in range(0, len(qa), batch_size):
        chunk = qa[i:i + batch_size]
        replies = answer(model, tok, pixels[[c[0] for c in chunk]], [c[1] for c in chunk])
        for (_, q, a), reply in zip(chunk, replies):
            right.setdefault(question_kind(q), []).append(int(reply == a))
    total = [x for v in right.values() for x in v]
    return sum(total) / max(1, len(total)), {k: sum(v) / len(v) for k, v in sorted(right.items())}
