"""CLIP and its ViT against transformers' CLIPModel (randomly initialised, tiny), both directions."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmkit.errors import ConfigError  # noqa: E402
from lmkit.vision.clip import CLIP, CLIPConfig, clip_loss, clip_vision_config  # noqa: E402
from lmkit.vision.clip_hub import load_clip, save_clip  # noqa: E402
from lmkit.vision.clip_text import CLIPTextConfig  # noqa: E402
from lmkit.vision.vit import ViT, ViTConfig  # noqa: E402

VOCAB, EOS = 99, 98


def tiny_hf(eos_token_id: int = EOS, act: str = "quick_gelu"):
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=eos_token_id,
                         bos_token_id=0, pad_token_id=1, hidden_act=act),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=16, patch_size=4, hidden_act=act),
        projection_dim=24,
    )
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # transformers initialises norms to 1/0 and logit_scale to a constant: perturb them
        for name, p in model.named_parameters():
            if "norm" in name or "logit_scale" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(eos_token_id: int = EOS):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, 16, 16, generator=g)
    ids = torch.randint(3, 90, (4, 9), generator=g)
    ids[0, 8] = ids[1, 5] = ids[2, 7] = ids[3, 3] = eos_token_id if eos_token_id != 2 else 97
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    return pixels, ids, mask


def assert_same(ours, theirs, pixels, ids, mask):
    with torch.no_grad():
        o = ours(pixels, ids, mask)
        t = theirs(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(o["image_embeds"], t.image_embeds, atol=1e-4, rtol=0)
    torch.testing.assert_close(o["text_embeds"], t.text_embeds, atol=1e-4, rtol=0)
    torch.testing.assert_close(o["logits_per_image"], t.logits_per_image, atol=1e-4, rtol=0)
    torch.testing.assert_close(o["logits_per_text"], t.logits_per_text, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    model = tiny_hf()
    path = tmp_path_factory.mktemp("hf_clip")
    model.save_pretrained(path)
    return model, path


def test_load_transformers_clip_matches(hf_folder):
    hf, path = hf_folder
    assert_same(load_clip(path).eval(), hf, *inputs())


def test_saved_folder_loads_in_transformers(hf_folder, tmp_path):
    hf, path = hf_folder
    ours = load_clip(path).eval()
    save_clip(ours, tmp_path / "ours")
    back = transformers.CLIPModel.from_pretrained(tmp_path / "ours").eval()
    assert_same(ours, back, *inputs())
    assert torch.equal(back.logit_scale, ours.logit_scale.detach())


@pytest.mark.parametrize("eos,act", [(2, "gelu")])
def test_legacy_eos_argmax_and_gelu(tmp_path, eos, act):
    hf = tiny_hf(eos_token_id=eos, act=act)
    hf.save_pretrained(tmp_path)
    assert_same(load_clip(tmp_path).eval(), hf, *inputs(eos))


def tiny_config() -> CLIPConfig:
    return CLIPConfig(
        vision=clip_vision_config(image_size=16, patch_size=4, d_model=32, n_layers=1, n_heads=4, d_ff=64),
        text=CLIPTextConfig(vocab_size=VOCAB, max_seq_len=16, d_model=32, n_layers=1, n_heads=4, d_ff=64,
                            eos_token_id=EOS),
        projection_dim=16,
    )


def test_loss_is_symmetric_infonce_and_zero_shot_picks_best_prompt():
    torch.manual_seed(0)
    logits = torch.randn(5, 5)
    ce = torch.nn.functional.cross_entropy
    expect = (ce(logits, torch.arange(5)) + ce(logits.t(), torch.arange(5))) / 2
    torch.testing.assert_close(clip_loss(logits), expect)
    model = CLIP(tiny_config()).eval()
    pixels, ids, _ = inputs()
    probs = model.zero_shot_classify(pixels, ids)
    assert probs.shape == (3, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    sims = model.encode_image(pixels) @ model.encode_text(ids).t()
    assert torch.equal(probs.argmax(-1), sims.argmax(-1))
    two = model.zero_shot_classify(pixels, ids, prompts_per_class=2)  # prompt ensembling: 2 classes x 2 prompts
    classes = torch.nn.functional.normalize(model.encode_text(ids).view(2, 2, -1).mean(1), dim=-1)
    torch.testing.assert_close(two, (model.logit_scale.exp() * model.encode_image(pixels) @ classes.t()).softmax(-1))


def test_vit_mean_pooling_and_shape_errors():
    vit = ViT(ViTConfig(image_size=8, patch_size=4, d_model=16, n_layers=1, n_heads=2, d_ff=32, pooling="mean"))
    assert vit(torch.randn(2, 3, 8, 8)).shape == (2, 16)
    with pytest.raises(ValueError, match="expected"):
        vit(torch.randn(2, 3, 9, 9))
    with pytest.raises(ConfigError, match="patch_size"):
        ViTConfig(image_size=10, patch_size=4)


def test_config_round_trips_through_dict():
    cfg = tiny_config()
    assert CLIPConfig.from_dict(cfg.to_dict()) == cfg


def test_digits_captions_tokenize_with_eos_and_padding():
    from lmkit.vision.clip_digits import caption_tokenizer, digit_prompts

    tok = caption_tokenizer()
    ids, mask = digit_prompts(tok)
    eos = tok.token_to_id("</s>")
    assert eos != 2  # HF's legacy argmax-of-ids pooling must not apply
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert row[0] == tok.token_to_id("<s>") and row[n - 1] == eos and (row[n:] == tok.token_to_id("<pad>")).all()
    assert len({tuple(r.tolist()) for r in ids}) == 10


def test_cli_clip_train_and_classify(tmp_path):
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from lmkit.cli import cli

    out = tmp_path / "clip"
    runner = CliRunner()
    r = runner.invoke(cli, ["clip", "train", "-o", str(out), "--steps", "3", "--batch-size", "16",
                            "--image-size", "8", "--d-model", "16", "--layers", "1"])
    assert r.exit_code == 0, r.output
    assert "zero-shot accuracy" in r.output and (out / "model.safetensors").is_file()
    img = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(img)
    r = runner.invoke(cli, ["clip", "classify", str(out), str(img), "--eval-digits"])
    assert r.exit_code == 0, r.output
    line = r.output.strip().splitlines()[-1].split("\t")
    assert line[0] == str(img) and line[1] in [str(d) for d in range(10)] and 0 < float(line[2]) <= 1
    r = runner.invoke(cli, ["clip", "classify", str(out)])
    assert r.exit_code != 0 and "give image files" in r.output
    r = runner.invoke(cli, ["clip", "classify", str(tmp_path), str(img)])
    assert r.exit_code != 0 and "no tokenizer.lmkit.json" in r.output
