"""eval/harness: lm-evaluation-harness YAML tasks scored as lm-eval scores them.

Oracles: lm-eval's own pieces (rolling windows, few-shot sampler, exact_match, filters) in the
default run, and `lm_eval.simple_evaluate(model="hf")` on the same checkpoint and task files
(slow: importing and running lm-eval takes ~30 s here): per-item log-likelihoods within 1e-4,
generations equal, metrics identical.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmkit.eval.harness import (LocalLM, TaskConfigError, evaluate_tasks, load_task_config, results_document,
                                run_task)
from lmkit.eval.harness.bundled_tasks import bundled_task_names, resolve_task_files
from lmkit.eval.harness.documents import load_splits
from lmkit.eval.harness.fewshot import FewshotSampler
from lmkit.eval.harness.metrics import exact_match
from lmkit.eval.harness.rolling_windows import disjoint_window, rolling_token_windows
from lmkit.hub import save_pretrained
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.tokenizers.bpe import BPETokenizer
from lmkit.tokenizers.special_tokens import CHAT_SPECIAL_TOKENS

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello there", "1+2=3 4+5=9 Question: Answer:"] * 10
TASKS = ("t_mc", "t_roll", "t_gen", "t_ll")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _yaml(path, body):
    path.write_text(body, encoding="utf-8")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("harness")
    tok = BPETokenizer.train(TEXT, vocab_size=300, special_tokens=list(CHAT_SPECIAL_TOKENS))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      max_seq_len=48, model_type="llama", tie_embeddings=False)
    save_pretrained(DecoderLM(cfg).eval(), d / "ckpt", tokenizer=tok)
    words = ["quick", "brown", "lazy", "hello", "world", "there"]
    _jsonl(d / "mc.jsonl", [{"q": f"the {w} fox", "choices": ["jumps", "dog over", "hello there", "lazy"],
                             "label": i % 4} for i, w in enumerate(words)])
    _jsonl(d / "roll.jsonl", [{"text": " ".join([TEXT[0]] * k)} for k in (1, 2, 5, 9)])
    # half the gold answers are the model's own greedy text, so exact_match is not trivially 0
    from lmkit.eval.harness.generation_kwargs import generation_request

    pairs = [(1, 2), (4, 5), (3, 3), (2, 7)]
    qs = [f"{a}+{b}=" for a, b in pairs]
    model = LocalLM.from_checkpoint(d / "ckpt", batch_size=4)
    own = model.generate_until([generation_request(q, {"until": ["\n"], "max_gen_toks": 8}, model.eos_text)
                                for q in qs[:2]])
    _jsonl(d / "gen.jsonl", [{"question": q, "answer": own[i] if i < 2 else str(sum(pairs[i]))}
                             for i, q in enumerate(qs)])
    tasks = d / "tasks"
    tasks.mkdir()
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {f}\ntest_split: test\n"
    # 2-shot prompts are longer than the 48-token context: left truncation is exercised
    _yaml(tasks / "t_mc.yaml", "task: t_mc\n" + head.format(f=d / "mc.jsonl") + """fewshot_split: test
num_fewshot: 2
output_type: multiple_choice
doc_to_text: "Question: {{q}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    _yaml(tasks / "t_roll.yaml", "task: t_roll\n" + head.format(f=d / "roll.jsonl") + """\
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    _yaml(tasks / "t_gen.yaml", "task: t_gen\n" + head.format(f=d / "gen.jsonl") + """output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "(\\\\d+)"
      - function: take_first
  - name: none
    filter:
      - function: take_first
metric_list:
  - metric: exact_match
    ignore_case: true
""")
    _yaml(tasks / "t_ll.yaml", "task: t_ll\n" + head.format(f=d / "gen.jsonl") + """fewshot_split: test
num_fewshot: 1
output_type: loglikelihood
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
""")
    results = evaluate_tasks(model, [load_task_config(tasks / f"{t}.yaml") for t in TASKS])
    return d, model, results_document(results, "tiny", log_samples=True)


def test_results_layout(setup):
    _, _, doc = setup
    for key in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
        assert set(doc[key]) == set(TASKS), key
    assert doc["n-shot"] == {"t_mc": 2, "t_roll": 0, "t_gen": 0, "t_ll": 1}
    assert set(doc["results"]["t_gen"]) >= {"exact_match,strict-match", "exact_match,none"}
    assert doc["results"]["t_gen"]["exact_match,none"] >= 0.5
    assert doc["higher_is_better"]["t_roll"] == {"word_perplexity": False, "byte_perplexity": False,
                                                 "bits_per_byte": False}
    mc = doc["samples"]["t_mc"][0]
    assert mc["arguments"][0][0].count("Question:") == 3 and mc["arguments"][0][1] == " jumps"


@pytest.mark.parametrize("n,max_len", [(1, 4), (10, 4), (37, 8), (8, 8), (9, 8), (50, 16)])
def test_rolling_windows_match_lm_eval(n, max_len):
    lm_utils = pytest.importorskip("lm_eval.utils")
    tokens = list(range(100, 100 + n))
    ours = [disjoint_window(w) for w in rolling_token_windows(tokens, 1, max_len)]
    theirs = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(tokens, 1, max_len, 1)]
    assert ours == theirs


def test_fewshot_sampler_matches_lm_eval():
    samplers = pytest.importorskip("lm_eval.api.samplers")
    pool = [{"i": i} for i in range(20)]
    ours, theirs = FewshotSampler(pool, 1234), samplers.ContextSampler(pool, rnd=1234)
    for doc in pool[:10]:
        assert ours.sample(3, doc) == theirs.sample(3, eval_doc=doc)
        assert ours.sample(2) == theirs.sample(2)


@pytest.mark.parametrize("kw", [{}, {"ignore_case": True}, {"ignore_punctuation": True},
                                {"regexes_to_ignore": [",", r"\$"], "ignore_case": True}, {"ignore_numbers": True}])
def test_exact_match_matches_lm_eval(kw):
    metrics = pytest.importorskip("lm_eval.api.metrics")
    pairs = [("Paris", "paris"), ("1,000", "1000"), ("$5.", "5"), ("a b", "a  b"), ("Hi!", "hi"), ("x1", "x2")]
    for p, r in pairs:
        assert exact_match(p, r, **kw) == metrics.exact_match_hf_evaluate([p], [r], **kw)["exact_match"]


def test_quantized_checkpoint_runs(setup, tmp_path):
    from lmkit.hub.pretrained import load_pretrained
    from lmkit.quant.checkpoint import save_quantized
    from lmkit.quant.quantize_model import quantize_model

    d, _, _ = setup
    q = tmp_path / "q"
    save_quantized(quantize_model(load_pretrained(d / "ckpt"), "int8"), q)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(d / "ckpt" / name, q / name)
    res = run_task(LocalLM.from_checkpoint(q), load_task_config(d / "tasks" / "t_roll.yaml"), limit=2)
    assert res.metrics["bits_per_byte,none"] > 0 and len(res.samples) == 2


@pytest.mark.parametrize("body,needle", [
    ("task: x\n  bad: [", "invalid YAML"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("task: x\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_target: a\n", "doc_to_choice"),
    ("task: x\ntest_split: test\noutput_type: ranking\ndoc_to_text: q\ndoc_to_target: a\n", "output_type"),
    ("task: x\ntest_split: test\ndoc_to_text: q\ndoc_to_target: a\nprocess_results: !!python/name:os.system\n",
     "invalid YAML"),
    ("task: x\ntest_split: test\ndoc_to_text: q\ndoc_to_target: a\nprocess_docs: f\n", "unsupported field"),
    ("task: x\ntest_split: test\ndoc_to_text: q\ndoc_to_target: a\nprocess_docs: !function u.f\n", "!function"),
    ("task: x\ndoc_to_text: q\ndoc_to_target: a\n", "test_split or validation_split"),
])
def test_bad_yaml_is_a_clear_error(tmp_path, body, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(body, encoding="utf-8")
    with pytest.raises(TaskConfigError, match=needle):
        load_task_config(p)


def test_bad_metric_and_missing_data_file(setup, tmp_path):
    d, model, _ = setup
    p = tmp_path / "t.yaml"
    p.write_text("task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: nowhere.jsonl\n"
                 "test_split: test\ndoc_to_text: q\ndoc_to_target: a\n", encoding="utf-8")
    with pytest.raises(TaskConfigError, match="nowhere.jsonl"):
        run_task(model, load_task_config(p))
    p.write_text((d / "tasks" / "t_roll.yaml").read_text().replace("bits_per_byte", "bleu_score"), encoding="utf-8")
    with pytest.raises(TaskConfigError, match="bleu_score"):
        run_task(model, load_task_config(p))


def test_bundled_tasks_load():
    names = bundled_task_names()
    assert {"lmkit_arithmetic", "lmkit_corpus_cloze", "lmkit_corpus_mc", "lmkit_corpus_ppl", "lmkit_notes_qa",
            "lmkit_notes_zh"} <= set(names)
    sizes = {}
    for path in resolve_task_files(",".join(names)):
        cfg = load_task_config(path)
        docs = load_splits(cfg)[cfg.eval_split]
        sizes[cfg.task] = len(docs)
    assert sizes["lmkit_notes_qa"] == 77 and sizes["lmkit_arithmetic"] == 100
    with pytest.raises(TaskConfigError, match="unknown task"):
        resolve_task_files("no_such_task")


def test_cli_writes_results_json(setup, tmp_path):
    from click.testing import CliRunner

    from lmkit.cli import cli

    d, _, _ = setup
    out = tmp_path / "results.json"
    r = CliRunner().invoke(cli, ["eval", "run", "--model", str(d / "ckpt"), "--tasks",
                                 f"lmkit_arithmetic,{d / 'tasks' / 't_mc.yaml'}", "--limit", "3",
                                 "--num-fewshot", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "lmkit_arithmetic" in r.output and "first-integer" in r.output
    doc = json.loads(out.read_text())
    assert doc["n-shot"] == {"lmkit_arithmetic": 1, "t_mc": 1}
    assert doc["n-samples"]["t_mc"] == {"original": 6, "effective": 3}
    assert 0.0 <= doc["results"]["t_mc"]["acc,none"] <= 1.0
    r = CliRunner().invoke(cli, ["eval", "run", "--tasks", "lmkit_arithmetic"])
    assert r.exit_code != 0 and "--model" in r.output


class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_endpoint_loglikelihood_from_echoed_logprobs():
    from lmkit.eval.harness.endpoint_model import EndpointError, EndpointLM

    def create(prompt, echo=False, **kw):
        toks = ["a", " b", " c", "!"]  # the prompt "a b c" and one generated token
        lp = _Obj(tokens=toks, token_logprobs=[None, -1.0, -2.0, -0.5], text_offset=[0, 1, 3, 5],
                  top_logprobs=[None, {" b": -1.0}, {" x": -0.1, " c": -2.0}, {"!": -0.5}])
        return _Obj(choices=[_Obj(text=prompt + "!", logprobs=lp)])

    lm = EndpointLM.__new__(EndpointLM)
    lm.base_url, lm.model = "http://x", "m"
    lm.client = _Obj(completions=_Obj(create=create))
    assert lm.loglikelihood([("a b", " c")]) == [(-2.0, False)]
    assert lm.loglikelihood([("a", " b c")]) == [(-3.0, False)]
    assert lm.loglikelihood_rolling(["a b c"]) == [-3.0]

    def no_prompt_logprobs(prompt, **kw):  # lmkit's server: log-probabilities of generated tokens only
        return _Obj(choices=[_Obj(text=prompt + "!", logprobs=_Obj(tokens=["!"], token_logprobs=[-0.5],
                                                                   text_offset=[len(prompt)], top_logprobs=[]))])

    lm.client = _Obj(completions=_Obj(create=no_prompt_logprobs))
    with pytest.raises(EndpointError, match="does not return log-probabilities of the prompt"):
        lm.loglikelihood([("a", " b")])


def _lm_eval(model_dir, tasks_dir):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32",
                                   tasks=list(TASKS), task_manager=TaskManager(include_path=str(tasks_dir)),
                                   log_samples=True, batch_size=4, device="cpu")


def _assert_same_as_lm_eval(ours, theirs):
    for task in TASKS:
        mine = {x["doc_id"]: x for x in ours["samples"][task]}
        assert {b["doc_id"] for b in theirs["samples"][task]} == set(mine)
        for b in theirs["samples"][task]:  # generate_until: one record per (document, filter)
            a = mine[b["doc_id"]]
            if task == "t_gen":
                assert a["resps"][0] == b["resps"][0][0]
                assert a["filtered_resps"][b["filter"]] == b["filtered_resps"][0]
            elif task == "t_roll":
                assert abs(a["resps"][0] - b["resps"][0][0]) < 1e-4
            else:
                assert [tuple(x) for x in a["arguments"]] == [tuple(x) for x in b["arguments"]]
                for (ll, greedy), r in zip(a["resps"], b["resps"], strict=True):
                    assert abs(ll - float(r[0][0])) < 1e-4 and greedy == bool(r[0][1])
        for key, value in theirs["results"][task].items():
            if "," in key and "_stderr" not in key:
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-9, abs=0), (task, key)


@pytest.mark.slow
def test_oracle_lm_eval_simple_evaluate(setup):
    """Per-item log-likelihoods within 1e-4 of lm-eval's HFLM on the same files; metrics identical."""
    d, _, ours = setup
    _assert_same_as_lm_eval(ours, _lm_eval(d / "ckpt", d / "tasks"))


@pytest.mark.slow
def test_oracle_lm_eval_with_a_bos_adding_tokenizer(setup, tmp_path):
    """The same with a tokenizer whose post-processor puts BOS before every text (as Llama's does)."""
    d, _, _ = setup
    ckpt = tmp_path / "bos"
    shutil.copytree(d / "ckpt", ckpt)
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    bos = next(t for t in tj["added_tokens"] if t["content"] == "<|im_start|>")
    piece = {"SpecialToken": {"id": bos["content"], "type_id": 0}}
    tj["post_processor"] = {"type": "TemplateProcessing", "single": [piece, {"Sequence": {"id": "A", "type_id": 0}}],
                            "pair": [piece, {"Sequence": {"id": "A", "type_id": 0}},
                                     {"Sequence": {"id": "B", "type_id": 1}}],
                            "special_tokens": {bos["content"]: {"id": bos["content"], "ids": [bos["id"]],
                                                                "tokens": [bos["content"]]}}}
    (ckpt / "tokenizer.json").write_text(json.dumps(tj))
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        cfg = json.loads((ckpt / name).read_text())
        cfg["bos_token"] = bos["content"]
        if "add_bos_token" in cfg:
            cfg["add_bos_token"] = True
        (ckpt / name).write_text(json.dumps(cfg))
    model = LocalLM.from_checkpoint(ckpt, batch_size=4)
    assert model.tok.encode("hello")[0] == bos["id"]
    ours = results_document(evaluate_tasks(model, [load_task_config(d / "tasks" / f"{t}.yaml") for t in TASKS]),
                            "bos", log_samples=True)
    _assert_same_as_lm_eval(ours, _lm_eval(ckpt, d / "tasks"))

def test_endpoint_on_lmkit_server_generates_like_local(setup):
    """generate_until over HTTP (lmkit's own server, the openai client) gives the local greedy text;
    log-likelihood tasks stop with a clear error, since lmkit's server returns no prompt logprobs."""
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from test_serve_util import LiveServer

    from lmkit.eval.harness.endpoint_model import EndpointError, EndpointLM
    from lmkit.serve.app import create_app
    from lmkit.serve.engine import Engine

    d, local, _ = setup
    app = create_app(Engine(local.model, local.tok.tokenizer, max_batch_size=2), model_name="tiny")
    with LiveServer(app) as live:
        remote = EndpointLM(live.url + "/v1")
        assert remote.model == "tiny"
        gen = load_task_config(d / "tasks" / "t_gen.yaml")
        ours, theirs = run_task(local, gen), run_task(remote, gen)
        assert [s["resps"] for s in theirs.samples] == [s["resps"] for s in ours.samples]
        assert theirs.metrics == ours.metrics
        with pytest.raises(EndpointError, match="does not return log-probabilities of the prompt"):
            run_task(remote, load_task_config(d / "tasks" / "t_ll.yaml"))
