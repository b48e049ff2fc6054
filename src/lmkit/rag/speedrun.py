"""`lmkit speedrun`: from nothing to a served chat model with RAG, every stage measured.

    data -> tokenizer -> pretrain -> SFT -> DPO -> eval -> quantize (int8/int4) -> GGUF
         -> serve (the real `lmkit serve`, one request through the `openai` client) -> RAG

Each stage calls the library functions the stage's own command uses (quickstart pipeline,
`peft.finetune.run_finetune`, `align.dpo.train_dpo`, `eval.*`, `quant.quantize_model`,
`hub.gguf`, `rag.*`); only the server runs as a subprocess. Every stage records its wall
time, its peak RSS, its numbers and checks against the profile's thresholds
(`speedrun_profile`), and what it changed against the stage before. The report card
(`speedrun_card`: card.md, card.html, card.json) is written even when a stage fails; the
run's result names the stages that failed or regressed.

It lives in `rag/` because it needs every package down to `rag` (DESIGN.md's layering rule).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmkit.rag.speedrun_measure import Check, SpeedrunError, StageOutcome, StageResult, run_stage
from lmkit.rag.speedrun_profile import STAGES, SpeedrunProfile

# Extra evaluation tasks: name -> fn(model, tokenizer) -> {metric: value}. The eval stage runs
# them after its built-in tasks and puts their numbers on the card. This is where the
# lm-eval-format harness (lmkit.eval.harness, issue 18) plugs in once it lands.
EvalTask = Callable[[Any, Any], dict[str, float]]


@dataclass
class SpeedrunResult:
    profile: str
    out: Path
    stages: list[StageResult]
    total_s: float
    budget_s: float
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    decontamination: dict[str, Any] = field(default_factory=dict)

    @property
    def problems(self) -> list[StageResult]:
        return [s for s in self.stages if s.status in ("failed", "regressed")]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"speedrun ({self.profile}) passed: {len(self.stages)} stages in {self.total_s:.1f} s"
        parts = []
        for s in self.problems:
            why = s.error or "; ".join(f"{c.metric}={c.value:.4g} (needs {c.describe()})"
                                       for c in s.checks if not c.passed)
            parts.append(f"stage '{s.name}' {s.status}: {why}")
        return f"speedrun ({self.profile}) FAILED: " + " | ".join(parts)


def _curve(records: list[dict[str, Any]], key: str = "loss") -> list[tuple[float, float]]:
    return [(float(r["step"]), float(r[key])) for r in records
            if key in r and "step" in r and r[key] is not None and math.isfinite(float(r[key]))]


class _Run:
    """The state one speedrun carries from stage to stage."""

    def __init__(self, profile: SpeedrunProfile, out: Path, seed: int, eval_tasks: dict[str, EvalTask]) -> None:
        self.p, self.out, self.seed, self.eval_tasks = profile, out, seed, eval_tasks
        self.th = profile.thresholds
        self.data = self.tok = self.template = None
        self.model_dir = self.base = self.sft = self.policy = None
        self.eval_pairs = None
        self.ppl_fp32 = None
        self.server = None

    # ---- helpers -----------------------------------------------------------------------------
    def ppl(self, model) -> float:
        from lmkit.eval.perplexity import text_perplexity

        return text_perplexity(model, self.tok, self.data.held_out, max_length=self.p.seq_len,
                               stride=self.p.seq_len // 2).perplexity

    def train_config(self, name: str, steps: int, lr: float, **kw):
        from lmkit.train.config import TrainConfig

        return TrainConfig(lr=lr, max_steps=steps, warmup_steps=min(10, steps // 10), out_dir=str(self.out / name),
                           seed=self.seed, progress=False, precision="fp32", log_every=1, **kw)

    def preference_accuracy(self, model, pairs) -> tuple[float, float]:
        """Share of pairs whose chosen reply the model gives more log-probability than the rejected
        one, and the mean margin (nats)."""
        import torch

        from lmkit.align.logprobs import completion_logprobs
        from lmkit.data.preference import collate_pairs

        wins, margins = 0, 0.0
        model.eval()
        with torch.no_grad():
            for i in range(0, len(pairs), 16):
                chunk = pairs[i:i + 16]
                b = collate_pairs(chunk, self.pad_id)
                lp = completion_logprobs(model, b["input_ids"], b["attention_mask"], b["completion_mask"]).sum
                diff = lp[: len(chunk)] - lp[len(chunk):]
                wins += int((diff > 0).sum())
                margins += float(diff.sum())
        return wins / len(pairs), margins / len(pairs)

    def mc_scorer(self, model):
        import torch

        from lmkit.align.logprobs import completion_logprobs

        def score(context: str, continuation: str) -> float:
            ids, mask = self.template.render_with_mask(
                [{"role": "user", "content": context}, {"role": "assistant", "content": continuation}], self.tok)
            ids, mask = ids[: self.max_len], mask[: self.max_len]
            with torch.no_grad():
                return float(completion_logprobs(model, torch.tensor([ids]), None, torch.tensor([mask])).sum[0])

        return score

    # ---- stages ------------------------------------------------------------------------------
    def stage_data(self) -> StageOutcome:
        from lmkit.atomic import atomic_write_text
        from lmkit.rag.speedrun_data import build_data

        self.data = d = build_data(self.p, self.seed)
        atomic_write_text(self.out / "corpus.txt", d.corpus)
        dc = d.decontamination
        found = sum(s["found_before"] for s in dc["sets"].values())
        items = sum(s["items"] for s in dc["sets"].values())
        return StageOutcome(
            {"corpus_chars": len(d.corpus), "held_out_chars": len(d.held_out), "train_terms": len(d.train_terms),
             "eval_terms": len(d.eval_terms), "eval_items": items, "overlap_before": found,
             "paragraphs_removed": dc["paragraphs_removed"], "overlap_after": dc["left_after_total"]},
            [Check("overlap_after", dc["left_after_total"], "<=", self.th["overlap_after_max"])],
            f"{found} of {items} eval items found in the raw corpus; {dc['paragraphs_removed']} paragraphs removed, "
            f"{dc['left_after_total']} left")

    def stage_tokenizer(self) -> StageOutcome:
        from lmkit.tokenizers import BPETokenizer
        from lmkit.tokenizers.chat_template import get_template
        from lmkit.tokenizers.special_tokens import CHAT_SPECIAL_TOKENS

        self.tok = BPETokenizer.train([self.out / "corpus.txt"], vocab_size=self.p.vocab_size,
                                      special_tokens=list(CHAT_SPECIAL_TOKENS))
        self.tok.save(self.out / "tokenizer.lmkit.json")
        self.template = get_template("chatml")
        text = self.data.held_out
        bpt = len(text.encode()) / max(1, len(self.tok.encode(text)))
        return StageOutcome({"vocab_size": self.tok.vocab_size, "held_out_bytes_per_token": round(bpt, 3)},
                            [Check("bytes_per_token", round(bpt, 3), ">=", self.th["bytes_per_token_min"])],
                            f"{bpt:.2f} bytes/token on held-out text (raw bytes: 1.00)")

    def stage_pretrain(self) -> StageOutcome:
        from lmkit.data.shards import ShardConfig, prepare_shards
        from lmkit.hub import load_pretrained
        from lmkit.train.metrics_log import read_metrics
        from lmkit.train.pretrain import PretrainConfig, run_pretrain, unigram_baseline_ppl

        shards = self.out / "shards"
        prepare_shards([self.out / "corpus.txt"], self.tok, shards,
                       ShardConfig(split_by="paragraph", val_fraction=0.05, seed=self.seed), overwrite=True,
                       progress=False)
        steps = self.p.pretrain_steps
        cfg = PretrainConfig(
            data=str(shards), tokenizer=str(self.out / "tokenizer.lmkit.json"), objective="clm",
            model=dict(self.p.model), seq_len=self.p.seq_len, batch_size=self.p.batch_size,
            export_dir=str(self.out / "model-base"),
            train={"max_steps": steps, "lr": self.p.pretrain_lr, "warmup_steps": min(50, steps // 5),
                   "schedule": "cosine", "min_lr_ratio": 0.1, "weight_decay": 0.1, "eval_every": 0,
                   "eval_steps": 0, "out_dir": str(self.out / "pretrain"), "seed": self.seed, "log_every": 1,
                   "progress": False, "precision": "fp32"})
        result = run_pretrain(cfg)
        self.model_dir = result["export_dir"]
        self.base = load_pretrained(self.model_dir).eval()
        self.max_len = self.base.config.max_seq_len
        self.pad_id = self.base.config.pad_token_id if self.base.config.pad_token_id is not None else 0
        unigram = unigram_baseline_ppl(str(shards), self.tok.vocab_size)
        ratio = result["eval_ppl"] / unigram
        records = read_metrics(self.out / "pretrain" / "metrics.jsonl")
        return StageOutcome(
            {"parameters": result["parameters"], "steps": steps, "val_ppl": round(result["eval_ppl"], 3),
             "unigram_ppl": round(unigram, 3), "ppl_over_unigram": round(ratio, 4)},
            [Check("ppl_over_unigram", round(ratio, 4), "<", self.th["ppl_over_unigram_max"])],
            f"validation perplexity {result['eval_ppl']:.1f} vs {unigram:.1f} for the unigram model of the same tokens",
            {"pretrain loss": _curve(records)})

    def stage_sft(self) -> StageOutcome:
        from lmkit.data.sft import sft_loader, tokenize_conversations
        from lmkit.hub import load_pretrained, save_pretrained
        from lmkit.peft.finetune import run_finetune
        from lmkit.rag.speedrun_data import chat_row
        from lmkit.train.metrics_log import read_metrics

        train = tokenize_conversations([chat_row(t, d) for t, d in self.data.train_terms], self.tok, self.template,
                                       self.max_len)
        held = tokenize_conversations([chat_row(t, d) for t, d in self.data.eval_terms], self.tok, self.template,
                                      self.max_len)
        model = load_pretrained(self.model_dir)
        tc = self.train_config("sft", self.p.sft_steps, self.p.sft_lr, schedule="cosine", min_lr_ratio=0.1, eval_steps=0)
        report = run_finetune("full", model, self.tok, sft_loader(train, 8, pad_id=self.pad_id, seed=self.seed),
                              sft_loader(held, 8, pad_id=self.pad_id, shuffle=False), None, tc)
        self.sft = report.model.eval()
        save_pretrained(self.sft, self.out / "model-sft", tokenizer=self.tok)
        delta = report.eval_loss - report.base_eval_loss
        return StageOutcome(
            {"train_examples": len(train), "held_out_examples": len(held), "steps": report.steps,
             "base_reply_loss": round(report.base_eval_loss, 4), "sft_reply_loss": round(report.eval_loss, 4)},
            [Check("sft_minus_base_reply_loss", round(delta, 4), "<", self.th["sft_loss_delta_max"])],
            f"held-out reply loss {report.base_eval_loss:.3f} (base) -> {report.eval_loss:.3f} (SFT) on "
            f"{len(held)} held-out instruction tasks",
            {"SFT loss": _curve(read_metrics(self.out / "sft" / "metrics.jsonl"))})

    def stage_dpo(self) -> StageOutcome:
        from lmkit.align.dpo import train_dpo
        from lmkit.data.preference import PreferencePair, tokenize_pairs
        from lmkit.hub import save_pretrained

        def pairs(which: str):
            rows = self.data.preference_rows(which, self.seed)
            return tokenize_pairs([PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows], self.tok,
                                  self.max_len, template=self.template)

        train, self.eval_pairs = pairs("train"), pairs("eval")
        self.policy = copy.deepcopy(self.sft)
        acc0, margin0 = self.preference_accuracy(self.policy, self.eval_pairs)
        records, _ = train_dpo(self.policy, train, self.train_config("dpo", self.p.dpo_steps, self.p.dpo_lr),
                               batch_size=self.p.batch_pairs, pad_id=self.pad_id, beta=self.p.dpo_beta)
        self.policy.eval()
        acc1, margin1 = self.preference_accuracy(self.policy, self.eval_pairs)
        save_pretrained(self.policy, self.out / "model-chat", tokenizer=self.tok)
        checks = [Check("pref_acc_gain", round(acc1 - acc0, 4), ">" if self.th["strict_dpo"] else ">=",
                        self.th["dpo_acc_gain_min"])]
        if not self.th["strict_dpo"]:
            checks.append(Check("pref_margin_gain", round(margin1 - margin0, 4), ">", 0.0))
        return StageOutcome(
            {"train_pairs": len(train), "eval_pairs": len(self.eval_pairs), "steps": len(records),
             "pref_acc_before": round(acc0, 4), "pref_acc_after": round(acc1, 4),
             "margin_before": round(margin0, 3), "margin_after": round(margin1, 3)},
            checks,
            f"held-out preference accuracy {acc0:.2f} (SFT) -> {acc1:.2f} (DPO); mean log-prob margin "
            f"{margin0:.2f} -> {margin1:.2f}",
            {"DPO loss": _curve(records)})

    def stage_eval(self) -> StageOutcome:
        from lmkit.eval.multiple_choice import evaluate_mc

        items = self.data.multiple_choice(self.seed)
        mc_base = evaluate_mc(items, self.mc_scorer(self.base))
        mc_final = evaluate_mc(items, self.mc_scorer(self.policy))
        ppl_base, self.ppl_fp32 = self.ppl(self.base), self.ppl(self.policy)
        metrics = {"mc_items": len(items), "mc_acc_base": mc_base["acc"], "mc_acc_chat": mc_final["acc"],
                   "mc_acc_norm_chat": mc_final["acc_norm"], "held_out_ppl_base": round(ppl_base, 3),
                   "held_out_ppl_chat": round(self.ppl_fp32, 3)}
        # ---- harness tasks plug in here (lmkit.eval.harness / `lmkit eval run`, issue 18) ----
        for name, task in self.eval_tasks.items():
            metrics.update({f"{name}/{k}": v for k, v in task(self.policy, self.tok).items()})
        return StageOutcome(
            metrics,
            [Check("mc_acc_chat", mc_final["acc"], ">=", self.th["mc_acc_min"]),
             Check("held_out_ppl_chat_finite", float(math.isfinite(self.ppl_fp32)), "==", 1.0)],
            f"4-way definition choice: {mc_base['acc']:.2f} (base) -> {mc_final['acc']:.2f} (chat model); "
            f"held-out perplexity {ppl_base:.1f} -> {self.ppl_fp32:.1f}")

    def stage_quantize(self) -> StageOutcome:
        from lmkit.quant.quantize_model import linear_weight_bytes, quantize_model, quantized_weight_bytes

        out, checks = {"fp32_ppl": round(self.ppl_fp32, 4)}, []
        for label, method, kw, limit in (("int8", "int8", {}, self.th["int8_ppl_ratio_max"]),
                                         ("int4", "rtn", {"bits": 4, "group_size": self.p.int4_group},
                                          self.th["int4_ppl_ratio_max"])):
            m = quantize_model(copy.deepcopy(self.policy), method, **kw)
            ratio = self.ppl(m) / self.ppl_fp32
            fp32_bytes = linear_weight_bytes(self.policy, m.quantization["modules"])
            out[f"{label}_ppl_ratio"] = round(ratio, 5)
            out[f"{label}_weight_bytes"] = quantized_weight_bytes(m)
            out["fp32_linear_bytes"] = fp32_bytes
            checks.append(Check(f"{label}_ppl_ratio", round(ratio, 5), "<=", limit))
        return StageOutcome(out, checks, f"perplexity x{out['int8_ppl_ratio']:.4f} (int8), "
                            f"x{out['int4_ppl_ratio']:.4f} (int4 RTN) vs fp32")

    def stage_gguf(self) -> StageOutcome:
        from lmkit.hub.gguf import export_gguf
        from lmkit.hub.gguf_import import load_gguf

        path = self.out / "model-chat.q8_0.gguf"
        export_gguf(self.policy, path, tokenizer=self.tok, ftype="q8_0")
        ratio = self.ppl(load_gguf(path)) / self.ppl_fp32
        return StageOutcome({"file": path.name, "bytes": path.stat().st_size, "q8_0_ppl_ratio": round(ratio, 5)},
                            [Check("gguf_q8_0_ppl_ratio", round(ratio, 5), "<=", self.th["gguf_ppl_ratio_max"])],
                            f"q8_0 GGUF ({path.stat().st_size / 1e6:.2f} MB) read back: perplexity x{ratio:.4f} vs fp32")

    def stage_serve(self) -> StageOutcome:
        from lmkit.rag.speedrun_server import ServedModel

        self.server = ServedModel(self.out / "model-chat").__enter__()
        term = self.data.eval_terms[0][0]
        t0 = time.perf_counter()
        reply, finish = self.server.chat([{"role": "user", "content": f"Explain {term}."}], max_tokens=48)
        latency = time.perf_counter() - t0
        return StageOutcome(
            {"startup_s": round(self.server.startup_s, 2), "request_s": round(latency, 3), "prompt": f"Explain {term}.",
             "reply": reply[:200], "finish_reason": finish, "server_peak_rss_bytes": self.server.peak_rss()},
            [Check("answered", float(bool(reply.strip())), "==", 1.0)],
            f"the served model answered through the openai client ({len(reply)} chars, finish={finish})")

    def stage_rag(self) -> StageOutcome:
        from lmkit.corpus import notes_dir
        from lmkit.rag.bm25 import BM25
        from lmkit.rag.evaluate import evaluate_retrieval
        from lmkit.rag.loaders import load_directory
        from lmkit.rag.speedrun_data import notes_questions
        from lmkit.rag.split_markdown import MarkdownHeaderSplitter

        docs, _ = load_directory(notes_dir())
        chunks = MarkdownHeaderSplitter(600, 80).split_documents(docs)
        ids = [f"c{i}" for i in range(len(chunks))]
        bm25 = BM25()
        bm25.add(ids, [c.text for c in chunks])
        meta = {i: c.metadata for i, c in zip(ids, chunks)}
        records = notes_questions()
        m = evaluate_retrieval(lambda q: [i for i, _ in bm25.search(q, 5)], records, meta, k=5)
        metrics = {"chunks": len(chunks), "questions": len(records), "hit@1": round(m["hit@1"], 4),
                   "hit@5": round(m["hit@5"], 4), "mrr": round(m["mrr"], 4)}
        if self.server is not None:  # one grounded question through the served model
            q = records[0]["question"]
            best = chunks[ids.index(bm25.search(q, 1)[0][0])].text
            room = max(16, self.max_len - 96)
            context = self.tok.decode(self.tok.encode(best)[:room // 2])
            reply, _ = self.server.chat([{"role": "user", "content": f"Context: {context}\nQuestion: {q}"}],
                                        max_tokens=16)
            metrics["grounded_question"], metrics["grounded_reply"] = q, reply[:120]
        return StageOutcome(metrics, [Check("hit@5", round(m["hit@5"], 4), ">=", self.th["rag_hit5_min"])],
                            f"BM25 over {len(chunks)} chunks of the notes: hit@5 {m['hit@5']:.3f} on "
                            f"{len(records)} questions")


def run_speedrun(profile: SpeedrunProfile, out: str | Path, *, seed: int = 0, inject: str | None = None,
                 until: str | None = None, eval_tasks: dict[str, EvalTask] | None = None,
                 report: Callable[[str], None] = print) -> SpeedrunResult:
    """Run the stages in order (up to `until`), write the report card under `out`, return the result.

    A stage that raises stops the run (later stages are 'skipped'); a stage whose checks fail
    is 'regressed' and the run goes on. `inject` (or LMKIT_SPEEDRUN_INJECT) makes a stage
    fail on purpose: "STAGE" / "STAGE:raise" / "STAGE:regress"."""
    from lmkit.rag.speedrun_card import write_card

    if until is not None and until not in STAGES:
        raise SpeedrunError(f"--until {until!r}: choose one of {', '.join(STAGES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(profile, out, seed, dict(eval_tasks or {}))
    stages = STAGES[: STAGES.index(until) + 1] if until else STAGES
    results: list[StageResult] = []
    curves: dict[str, list[tuple[float, float]]] = {}
    t0 = time.perf_counter()
    stopped = False
    try:
        for i, name in enumerate(stages, 1):
            if stopped:
                results.append(StageResult(name))
                continue
            result, outcome = run_stage(name, getattr(run, f"stage_{name}"), inject)
            results.append(result)
            if outcome is not None:
                curves.update(outcome.curves)
            mark = {"ok": "ok", "regressed": "REGRESSED", "failed": "FAILED"}[result.status]
            report(f"[{i}/{len(stages)}] {name:<9} {result.seconds:7.1f} s  {mark:<9} "
                   f"{result.error or result.change}")
            stopped = result.status == "failed"
    finally:
        if run.server is not None:
            run.server.stop()
    result = SpeedrunResult(profile.name, out, results, round(time.perf_counter() - t0, 2), profile.budget_s, curves,
                            run.data.decontamination if run.data is not None else {})
    paths = write_card(result, profile)
    report(f"report card: {paths['md']} and {paths['html']}")
    report(result.summary())
    return result
