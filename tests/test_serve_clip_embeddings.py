"""`lmkit serve` on a CLIP folder: /v1/embeddings embeds texts and images (data URLs) into one
space. The real server runs in a subprocess and is asked through the official `openai` client;
the vectors and the image-text cosines must equal the ones computed in-process."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from live_server import free_port, start_serve, stop, wait_until_healthy

pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("PIL")

from lmkit.serve.clip_embeddings import CLIPEmbedder, data_url_bytes  # noqa: E402
from lmkit.vision.clip_digits import tokenize  # noqa: E402
from lmkit.vision.clip_folder import TOKENIZER_FILE, is_clip_folder, load_clip_folder  # noqa: E402
from lmkit.vision.clip_hub import save_clip  # noqa: E402
from lmkit.vision.clip_shapes import MAX_LEN, new_shapes_clip, shapes_tokenizer  # noqa: E402
from lmkit.vision.image_input import image_pixels  # noqa: E402
from lmkit.vision.shapes import make_scenes, render_scene  # noqa: E402

CAPTIONS = ["a red circle", "a blue square left of a green triangle", "a yellow triangle"]


def _png_data_url(scene, size: int = 16) -> str:
    buf = io.BytesIO()
    render_scene(scene, size).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    tok = shapes_tokenizer()
    model = new_shapes_clip(tok, seed=0, image_size=16, patch_size=4, d_model=32, n_layers=1)
    path = tmp_path_factory.mktemp("clip") / "shapes-clip"
    save_clip(model, path)
    tok.save(path / TOKENIZER_FILE)
    return path


def test_clip_embedder_in_process(clip_dir):
    assert is_clip_folder(clip_dir) and not is_clip_folder(clip_dir.parent)
    model, tok = load_clip_folder(clip_dir)
    emb = CLIPEmbedder(model, tok)
    urls = [_png_data_url(s) for s in make_scenes(2, seed=3)]
    vecs, n_tok = emb.embed_inputs([CAPTIONS[0], urls[0], {"image": urls[1]}, {"text": CAPTIONS[1]}])
    ids, mask = tokenize(tok, [CAPTIONS[0], CAPTIONS[1]], MAX_LEN)
    with torch.no_grad():
        texts = model.encode_text(ids, mask)
        images = model.encode_image(torch.stack([image_pixels(data_url_bytes(u), 16, 3) for u in urls]))
    assert torch.allclose(vecs[[0, 3]], texts, atol=1e-5) and torch.allclose(vecs[[1, 2]], images, atol=1e-5)
    assert n_tok == int(mask.sum())
    from lmkit.errors import ConfigError

    for bad, match in [("data:text/plain;base64,aGk=", "not an image"), ("data:image/png;base64,!!", "base64"),
                       ({"image": "https://example.com/x.png"}, "remote"), ({"video": "x"}, "object"),
                       ("data:image/png;base64," + base64.b64encode(b"not a png").decode(), "Pillow")]:
        with pytest.raises(ConfigError, match=match):
            emb.embed_inputs([bad])


def test_lmkit_serve_clip_folder_embeds_texts_and_images(clip_dir):
    port = free_port()
    proc = start_serve(clip_dir, port)
    scenes = make_scenes(3, seed=5)
    urls = [_png_data_url(s) for s in scenes]
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        texts = client.embeddings.create(model="shapes-clip", input=CAPTIONS)
        images = client.embeddings.create(model="shapes-clip", input=[urls[0], {"image": urls[1]}, urls[2]])
        mixed = client.embeddings.create(model="shapes-clip", input=[CAPTIONS[0], urls[0]])
        got_t = torch.tensor([d.embedding for d in texts.data])
        got_i = torch.tensor([d.embedding for d in images.data])
        assert got_t.shape == (3, 32) and got_i.shape == (3, 32)
        assert texts.usage.prompt_tokens > 0 and images.usage.prompt_tokens == 0
        assert torch.allclose(torch.tensor(mixed.data[0].embedding), got_t[0], atol=1e-6)
        assert torch.allclose(torch.tensor(mixed.data[1].embedding), got_i[0], atol=1e-6)
        with pytest.raises(openai.BadRequestError, match="base64"):
            client.embeddings.create(model="shapes-clip", input=["data:image/png;base64,@@"])
        with pytest.raises(openai.NotFoundError):  # no generation routes on a CLIP server
            client.chat.completions.create(model="shapes-clip", messages=[{"role": "user", "content": "hi"}])
        assert client.models.list().data[0].id == "shapes-clip"
    finally:
        stop(proc)
    assert "serving 'shapes-clip' (CLIP" in proc.stderr.read()
    model, tok = load_clip_folder(clip_dir)  # in-process: the same vectors, so the same cosines
    ids, mask = tokenize(tok, CAPTIONS, MAX_LEN)
    with torch.no_grad():
        ref_t = model.encode_text(ids, mask)
        ref_i = model.encode_image(torch.stack([image_pixels(data_url_bytes(u), 16, 3) for u in urls]))
    assert torch.allclose(got_t, ref_t, atol=1e-5) and torch.allclose(got_i, ref_i, atol=1e-5)
    assert torch.allclose(got_i @ got_t.T, ref_i @ ref_t.T, atol=1e-5)
    assert torch.allclose(got_t.norm(dim=-1), torch.ones(3), atol=1e-5)
