"""Text encoders: the T5 loading path with a small T5 built from a config, and the bundled MiniLM against
sentence-transformers' own token embeddings."""

from __future__ import annotations

import pytest
import torch

from cosmos_nemo.compat import hide_unusable_torchvision
from cosmos_nemo.tokenizers import text as te


@pytest.fixture(scope="module")
def tiny_t5_folder(tmp_path_factory):
    hide_unusable_torchvision()
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("tiny_t5")
    torch.manual_seed(0)
    config = T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(config).eval().save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder


def test_t5_from_folder_matches_transformers_and_zero_pads(tiny_t5_folder):
    from transformers import ByT5Tokenizer, T5EncoderModel

    enc = te.load_text_encoder(tiny_t5_folder)
    assert enc.max_length == te.T5_MAX_LENGTH and enc.dim == 32
    prompts = ["a red ball", "two balls collide on a grey background"]
    out = enc.encode(prompts)
    assert out.embeddings.shape == (2, 512, 32) and out.embeddings.dtype == torch.float32
    assert out.mask.dtype == torch.bool
    # Independent computation: ByT5 ids are utf-8 bytes + 3, followed by </s> (id 1).
    lengths = [len(p.encode()) + 1 for p in prompts]
    assert out.mask.sum(1).tolist() == lengths
    ref_model = T5EncoderModel.from_pretrained(tiny_t5_folder).eval()
    for i, p in enumerate(prompts):
        ids = torch.tensor([[b + 3 for b in p.encode()] + [1]])
        with torch.no_grad():
            ref = ref_model(input_ids=ids).last_hidden_state[0]
        # Padding is masked in attention, so the prompt rows equal an unpadded forward pass.
        torch.testing.assert_close(out.embeddings[i, : lengths[i]], ref, rtol=1e-5, atol=1e-5)
        assert torch.count_nonzero(out.embeddings[i, lengths[i]:]) == 0
    assert ByT5Tokenizer  # the fixture's tokenizer class


def test_truncation_and_max_length_override(tiny_t5_folder):
    enc = te.load_text_encoder(tiny_t5_folder, max_length=16)
    out = enc.encode(["x" * 100, ""])
    assert out.embeddings.shape == (2, 16, 32)
    assert out.mask.sum(1).tolist() == [16, 1]  # truncated; the empty prompt is just </s>
    assert enc.encode([]).embeddings.shape == (0, 16, 32)
    with pytest.raises(TypeError):
        enc.encode("not a list")


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    enc = te.load_text_encoder("minilm")
    assert (enc.dim, enc.max_length) == (384, te.MINILM_MAX_LENGTH)
    prompts = ["A red ball bounces on the floor.", "Three balls collide in front of a grey background."]
    out = enc.encode(prompts)
    st = SentenceTransformer(str(te.minilm_path()), device="cpu")
    ref = st.encode(prompts, output_value="token_embeddings", convert_to_numpy=False)
    for i in range(2):
        n = int(out.mask[i].sum())
        assert n == ref[i].shape[0]
        torch.testing.assert_close(out.embeddings[i, :n], ref[i].float(), rtol=1e-4, atol=1e-4)
        assert torch.count_nonzero(out.embeddings[i, n:]) == 0
    # It is a real sentence encoder: related captions are closer than unrelated ones.
    pooled = lambda o: torch.nn.functional.normalize((o.embeddings.sum(1) / o.mask.sum(1, keepdim=True)), dim=-1)
    e = pooled(enc.encode(["a red ball bounces", "a red sphere bounces", "quarterly stock market report"]))
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_t5_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(te.TextEncoderNotAvailableError, match=r"(?s)google-t5/t5-11b.*--local-dir"):
        te.load_text_encoder("t5-11b")
    with pytest.raises(te.TextEncoderNotAvailableError):
        te.load_text_encoder("no-such-org/no-such-model")
