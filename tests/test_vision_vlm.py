"""The vision-language model: LLaVA parity with transformers (both directions), chat with images,
the training stages on shapes scenes, and images in chat through the real `lmkit serve` with
the official openai client."""

from __future__ import annotations


import pytest
import torch
from live_server import free_port, start_serve, stop, wait_until_healthy

from lmkit.errors import ConfigError
from lmkit.tokenizers.chat_template import CHATML
from lmkit.vision.shapes import make_scenes, render_scene, scene_pixels
from lmkit.vision.vlm import VisionLanguageModel
from lmkit.vision.vlm_chat import decode_data_url, encode_data_url, encode_vlm_chat, images_to_pixels, split_content
from lmkit.vision.vlm_hub import load_vlm, load_vlm_dir, save_vlm, save_vlm_dir
from lmkit.vision.vlm_train import (VLMTrainSettings, answer, conversation_ids, image_message, shapes_tokenizer,
                                    shapes_vlm, train_shapes_vlm)

transformers = pytest.importorskip("transformers")

IMAGE_ID, VOCAB = 49, 50


def _hf_llava(layer: int, select: str, seed: int = 0):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=16, patch_size=4)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_ID, vision_feature_layer=layer,
                      vision_feature_select_strategy=select)
    return LlavaForConditionalGeneration(cfg).eval()


def _inputs(n_image_tokens: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, IMAGE_ID, (2, 7), generator=g)
    ids = torch.cat([ids[:, :3], torch.full((2, n_image_tokens), IMAGE_ID), ids[:, 3:]], dim=1)
    return ids, torch.randn(2, 3, 16, 16, generator=g)


@pytest.mark.parametrize("layer,select", [(-2, "default"), (-1, "full")])
def test_llava_parity_both_directions(tmp_path, layer, select):
    hf = _hf_llava(layer, select)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_vlm(tmp_path / "hf")
    assert ours.config.vision_feature_layer == layer and ours.config.feature_select == select
    ids, pixels = _inputs(ours.config.n_image_tokens)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # a left-padded row
    with torch.no_grad():
        theirs = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        mine = ours(ids, pixel_values=pixels, attention_mask=mask).logits
    assert (theirs - mine)[mask.bool()].abs().max() <= 1e-4

    # ours -> transformers: a model of ours (new random weights) saved and read back by transformers
    torch.manual_seed(3)
    fresh = VisionLanguageModel(ours.config).eval()
    save_vlm(fresh, tmp_path / "ours")
    back = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert (back(input_ids=ids, pixel_values=pixels).logits - fresh(ids, pixel_values=pixels).logits
                ).abs().max() <= 1e-4


def test_greedy_generation_matches_transformers(tmp_path):
    hf = _hf_llava(-2, "default", seed=5)
    hf.save_pretrained(tmp_path)
    ours = load_vlm(tmp_path)
    ids, pixels = _inputs(ours.config.n_image_tokens)
    with torch.no_grad():
        theirs = hf.generate(input_ids=ids[:1], pixel_values=pixels[:1], max_new_tokens=6, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
    mine = ours.generate([ids[0].tolist()], pixels[:1], max_new_tokens=6, do_sample=False, eos_token_id=[]).sequences[0]
    assert mine == theirs


def test_wrong_image_token_count_is_an_error(tmp_path):
    hf = _hf_llava(-2, "default")
    hf.save_pretrained(tmp_path)
    ours = load_vlm(tmp_path)
    ids, pixels = _inputs(ours.config.n_image_tokens - 1)
    with pytest.raises(ValueError, match="<image> tokens"):
        ours(ids, pixel_values=pixels)


def test_chat_rendering_places_images_and_masks_the_reply():
    tok = shapes_tokenizer()
    image_id = tok.token_to_id("<image>")
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:a"}},
                                         {"type": "text", "text": "what colour is the circle?"},
                                         {"type": "image_url", "image_url": {"url": "data:b"}}]},
            {"role": "assistant", "content": "red"}]
    ids, mask, urls = encode_vlm_chat(tok, CHATML, msgs, image_id, 4, add_generation_prompt=False)
    assert urls == ["data:a", "data:b"] and ids.count(image_id) == 8
    reply = [tok.id_to_token(i) for i, m in zip(ids, mask) if m]
    assert reply == ["red", "<|im_end|>"]
    # typed text never becomes the <image> token (nor a turn marker)
    typed, _, _ = encode_vlm_chat(tok, CHATML, [{"role": "user", "content": "<image> <|im_start|>"}], image_id, 4)
    assert image_id not in typed
    assert split_content("plain") == ("plain", [])
    with pytest.raises(ConfigError, match="image_url"):
        split_content([{"type": "audio"}])


def test_data_urls_round_trip_and_network_urls_are_refused():
    scene = make_scenes(1, seed=3)[0]
    url = encode_data_url(render_scene(scene, 32))
    assert torch.equal(images_to_pixels([decode_data_url(url)], 32), scene_pixels([scene], 32))
    with pytest.raises(ConfigError, match="only data URLs"):
        decode_data_url("https://example.com/cat.png")
    with pytest.raises(ConfigError, match="readable image"):
        decode_data_url("data:image/png;base64,bm90IGFuIGltYWdl")


def test_training_stages_run_and_the_folder_reloads(tmp_path):
    s = VLMTrainSettings(image_size=16, patch_size=8, d_model=32, layers=1, n_train=16, n_test=2, clip_steps=2,
                         align_steps=2, instruct_steps=2, batch_size=8, lora_rank=2)
    model, tok, report = train_shapes_vlm(s, progress=False)
    assert set(report.seconds) == {"clip", "align", "instruct", "eval"} and 0.0 <= report.accuracy <= 1.0
    assert not any("lora" in n for n, _ in model.named_parameters())  # LoRA merged away
    save_vlm_dir(model, tok, tmp_path)
    again, tok2 = load_vlm_dir(tmp_path)
    pixels = scene_pixels(make_scenes(2, seed=9), 16)
    questions = ["what colour is the circle?", "how many shapes are there?"]
    assert answer(again, tok2, pixels, questions) == answer(model, tok, pixels, questions)


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vlm-served")
    tok = shapes_tokenizer()
    model = shapes_vlm(tok, VLMTrainSettings(image_size=16, patch_size=8, d_model=32, layers=1, seed=4)).eval()
    save_vlm_dir(model, tok, path)
    return path


def test_serve_answers_an_image_through_the_openai_client(served_dir):
    pytest.importorskip("httpx")
    openai = pytest.importorskip("openai")
    model, tok = load_vlm_dir(served_dir)
    scene = make_scenes(1, seed=11)[0]
    url = encode_data_url(render_scene(scene, 16))
    ids, _ = conversation_ids(model, tok, "what colour is the circle?", None)
    expected = model.generate([ids], scene_pixels([scene], 16), tokenizer=tok, max_new_tokens=5, do_sample=False,
                              eos_token_id=[tok.token_to_id("<|im_end|>")]).texts[0]
    port = free_port()
    proc = start_serve(served_dir, port, "--model-name", "vlm")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, base)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        message = image_message("what colour is the circle?", url)
        r = client.chat.completions.create(model="vlm", messages=[message], temperature=0, max_tokens=5)
        assert r.choices[0].message.content == expected
        assert r.usage.prompt_tokens == len(ids)
        with pytest.raises(openai.BadRequestError, match="only data URLs"):
            client.chat.completions.create(model="vlm", messages=[image_message("what?", "https://x.org/a.png")],
                                           max_tokens=3)
        text_only = client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": "what"}],
                                                   temperature=0, max_tokens=3)  # the engine's text path still works
        assert text_only.choices[0].finish_reason in ("stop", "length")
    finally:
        stop(proc)


def test_vlm_chat_command_answers_about_an_image_file(served_dir, tmp_path):
    from click.testing import CliRunner

    from lmkit.cli import cli

    scene = make_scenes(1, seed=12)[0]
    render_scene(scene, 16).save(tmp_path / "scene.png")
    model, tok = load_vlm_dir(served_dir)
    expected = answer(model, tok, scene_pixels([scene], 16), ["how many shapes are there?"], max_new_tokens=16)[0]
    r = CliRunner().invoke(cli, ["vlm", "chat", str(served_dir), "--image", str(tmp_path / "scene.png"),
                                 "-q", "how many shapes are there?"])
    assert r.exit_code == 0, r.output
    assert r.output == f"how many shapes are there?\t{expected}\n"
    missing = CliRunner().invoke(cli, ["vlm", "chat", str(served_dir)])
    assert missing.exit_code != 0 and "--image" in missing.output
