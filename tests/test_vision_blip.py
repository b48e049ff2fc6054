"""BLIP against transformers' BlipForConditionalGeneration / BlipForImageTextRetrieval (randomly
initialised, tiny), both directions; the ITC/ITM/LM losses and the shapes-caption helpers."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmkit.errors import CheckpointError, ConfigError  # noqa: E402
from lmkit.vision.blip import BLIP, BLIPConfig, blip_vision_config  # noqa: E402
from lmkit.vision.blip_hub import load_blip, save_blip  # noqa: E402
from lmkit.vision.blip_losses import blip_losses, hard_negatives, same_rows  # noqa: E402
from lmkit.vision.blip_shapes import (auc, caption_attributes, changed_caption, shapes_tokenizer,  # noqa: E402
                                      tokenize)
from lmkit.vision.blip_text import BLIPTextConfig  # noqa: E402
from lmkit.vision.clip import clip_loss  # noqa: E402

VOCAB, BOS, SEP = 99, 97, 98


def hf_config(vision_width: int = 48):
    return transformers.BlipConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=BOS, sep_token_id=SEP,
                         pad_token_id=0, label_smoothing=0.1),
        vision_config=dict(hidden_size=vision_width, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=16, patch_size=4),
        image_text_hidden_size=24,
    )


def perturb(model):
    """transformers initialises norms to 1/0 and biases to 0: perturb them so a misnamed one shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or "bias" in name or "embedding" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """A captioning and a retrieval model with one ViT (text width 32, vision width 48), saved."""
    torch.manual_seed(0)
    cap = perturb(transformers.BlipForConditionalGeneration(hf_config()).eval())
    ret = perturb(transformers.BlipForImageTextRetrieval(hf_config()).eval())
    ret.vision_model.load_state_dict(cap.vision_model.state_dict())
    root = tmp_path_factory.mktemp("hf_blip")
    cap.save_pretrained(root / "cap")
    ret.save_pretrained(root / "ret")
    return cap, ret, root


def inputs():
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, 16, 16, generator=g)
    ids = torch.randint(3, 90, (3, 7), generator=g)
    ids[:, 0] = BOS
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return pixels, ids, mask


def assert_captioning_same(ours, theirs):
    pixels, ids, mask = inputs()
    with torch.no_grad():
        t = theirs(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        states = ours.image_states(pixels)
        o = ours.caption_logits(states, ids, mask)
        real = mask.bool()
        torch.testing.assert_close(o[real], t.logits[real], atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.caption_loss(states, ids, mask), t.loss, atol=1e-4, rtol=0)
        torch.testing.assert_close(states, theirs.vision_model(pixel_values=pixels).last_hidden_state, atol=1e-4, rtol=0)


def assert_retrieval_same(ours, theirs):
    pixels, ids, mask = inputs()
    with torch.no_grad():
        for itm in (True, False):
            t = theirs(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=itm).itm_score
            torch.testing.assert_close(ours.retrieval_scores(pixels, ids, mask, use_itm_head=itm), t, atol=1e-4, rtol=0)


def test_load_transformers_blip_matches(hf_pair):
    cap, ret, root = hf_pair
    captioner = load_blip(root / "cap").eval()
    assert captioner.config.parts == ["captioning"] and captioner.config.text.encoder_width == 48
    assert_captioning_same(captioner, cap)
    assert_retrieval_same(load_blip(root / "ret").eval(), ret)
    both = load_blip(root / "cap", root / "ret").eval()
    assert both.config.parts == ["retrieval", "captioning"]
    assert_captioning_same(both, cap)
    assert_retrieval_same(both, ret)


def test_saved_folders_load_in_transformers(hf_pair, tmp_path):
    cap, ret, root = hf_pair
    ours = load_blip(root / "cap", root / "ret").eval()
    with torch.no_grad():
        ours.logit_scale.fill_(3.0)
    save_blip(ours, tmp_path / "cap", "captioning")
    save_blip(ours, tmp_path / "ret", "retrieval")
    back_cap, info = transformers.BlipForConditionalGeneration.from_pretrained(tmp_path / "cap", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    back_ret, info = transformers.BlipForImageTextRetrieval.from_pretrained(tmp_path / "ret", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_captioning_same(ours, back_cap.eval())
    assert_retrieval_same(ours, back_ret.eval())
    again = load_blip(tmp_path / "cap", tmp_path / "ret")
    assert float(again.logit_scale.detach()) == pytest.approx(3.0)  # the ITC scale travels in config.json


def test_mismatched_folders_and_missing_parts(hf_pair, tmp_path):
    cap, ret, root = hf_pair
    other = transformers.BlipForImageTextRetrieval(hf_config())
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="not one BLIP"):
        load_blip(root / "cap", tmp_path / "other")
    captioner = load_blip(root / "cap")
    with pytest.raises(ValueError, match="retrieval part is missing"):
        save_blip(captioner, tmp_path / "x", "retrieval")
    with pytest.raises(ConfigError, match="encoder_width"):
        BLIPConfig(vision=blip_vision_config(d_model=32, n_heads=4), text=BLIPTextConfig(encoder_width=48))


def tiny_blip() -> BLIP:
    torch.manual_seed(0)
    return BLIP(BLIPConfig(
        vision=blip_vision_config(image_size=16, patch_size=8, d_model=32, n_layers=1, n_heads=4, d_ff=64),
        text=BLIPTextConfig(vocab_size=VOCAB, max_seq_len=16, d_model=32, n_layers=1, n_heads=4, d_ff=64,
                            encoder_width=32, bos_token_id=BOS, sep_token_id=SEP),
        embed_dim=16,
    ))


def test_hard_negatives_avoid_same_caption_and_follow_similarity():
    ids = torch.tensor([[1, 5], [1, 5], [1, 6], [1, 7]])
    same = same_rows(ids)
    assert same.tolist()[0] == [True, True, False, False]
    sim = torch.tensor([[0.0, 0.0, 50.0, 0.0]] * 4)
    g = torch.Generator().manual_seed(0)
    picks = torch.stack([hard_negatives(sim, same, g) for _ in range(20)])
    assert (picks[:, :2] == 2).all()  # rows 0, 1: column 2 is by far the most similar allowed one
    assert (picks[:, 2] != 2).all()  # row 2 never picks itself
    alone = hard_negatives(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool), g)
    assert alone.tolist() == [0, 1]  # no allowed column: the row keeps itself
    mixed = torch.stack([hard_negatives(sim, same, g, hard_share=0.5) for _ in range(200)])
    assert 0.05 < (mixed[:, 0] == 3).float().mean() < 0.5  # half uniform: column 3 now drawn ~1/4 of the time
    assert (mixed[:, 0] != 0).all() and (mixed[:, 0] != 1).all()


def test_blip_losses_and_generation():
    model = tiny_blip()
    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(4, 3, 16, 16, generator=g)
    ids = torch.randint(3, 90, (4, 6), generator=g)
    mask = torch.ones_like(ids)
    losses = blip_losses(model, pixels, ids, mask, enc_token_id=2, generator=g)
    states = model.image_states(pixels)
    sim = model.similarity(model.image_embedding(states), model.text_embedding(ids, mask))
    torch.testing.assert_close(losses["itc"], clip_loss(sim))
    assert losses["itm"] > 0 and losses["lm"] > 0
    losses["loss"].backward()
    assert model.itm_head.weight.grad is not None and model.text_decoder.embed_tokens.weight.grad is not None
    out = model.generate_captions(pixels, max_new_tokens=5)
    assert out.shape[0] == 4 and out.shape[1] <= 6 and (out[:, 0] == BOS).all()


def test_shapes_caption_attributes():
    from lmkit.vision.shapes import make_scenes

    assert caption_attributes("a red circle left of a blue square") == \
        caption_attributes("a blue square right of a red circle")
    assert caption_attributes("a red circle above a blue square") != caption_attributes("a red circle below a blue square")
    assert caption_attributes("a red circle") == (("red", "circle"),)
    assert caption_attributes("a red") is None and caption_attributes("a red circle left a blue square") is None
    import random

    rng = random.Random(0)
    for scene in make_scenes(30, seed=3):
        changed = changed_caption(scene, rng)
        assert caption_attributes(changed) is not None
        assert caption_attributes(changed) != caption_attributes(scene.caption())
    tok = shapes_tokenizer()
    ids, mask = tokenize(tok, [s.caption() for s in make_scenes(5, seed=3)])
    assert (ids[:, 0] == tok.token_to_id("<cls>")).all() and (ids != tok.unk_id).all()
    assert auc(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.8])) == pytest.approx(0.875)


def test_config_round_trips_through_dict():
    cfg = tiny_blip().config
    assert BLIPConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_blip_train_and_caption(tmp_path):
    from click.testing import CliRunner

    from lmkit.cli import cli
    from lmkit.vision.shapes import make_scenes, render_scene

    out = tmp_path / "blip"
    runner = CliRunner()
    r = runner.invoke(cli, ["blip", "train", "-o", str(out), "--steps", "2", "--batch-size", "8", "--train-scenes", "16",
                            "--test-scenes", "8", "--d-model", "16", "--layers", "1"])
    assert r.exit_code == 0, r.output
    assert "caption exact-attribute accuracy" in r.output and "ITM AUC" in r.output
    assert (out / "captioning" / "model.safetensors").is_file() and (out / "retrieval" / "config.json").is_file()
    img = tmp_path / "scene.png"
    render_scene(make_scenes(1, seed=4)[0]).save(img)
    r = runner.invoke(cli, ["blip", "caption", str(out), str(img)])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1].startswith(f"{img}\t")
    r = runner.invoke(cli, ["blip", "caption", str(out)])
    assert r.exit_code != 0 and "give image files" in r.output
    r = runner.invoke(cli, ["blip", "caption", str(tmp_path), str(img)])
    assert r.exit_code != 0 and "no tokenizer.lmkit.json" in r.output
