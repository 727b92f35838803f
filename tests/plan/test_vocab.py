"""Merging models with different vocabularies: rows mapped by token, then merged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergekit_like.demo import VOCAB, make_model, save_tokenizer, tiny_config
from tests.conftest import load_tensors, write_recipe

EXTRA = ["<|im_start|>", "<|im_end|>", "zz"]
EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"


@pytest.fixture(scope="module")
def vocab_models(tmp_path_factory, llama_family) -> dict[str, Path]:
    """ext: VOCAB + 3 new tokens (67 rows); perm: VOCAB with ids reversed after the specials."""
    root = tmp_path_factory.mktemp("vocab")
    ext = make_model(root / "ext", tiny_config("llama", vocab=len(VOCAB) + 3), 11,
                     tokenizer=False)
    save_tokenizer(ext, [*VOCAB, *EXTRA], specials=EXTRA[:2])
    perm_vocab = VOCAB[:4] + VOCAB[4:][::-1]
    perm = make_model(root / "perm", tiny_config("llama"), 12, tokenizer=False)
    save_tokenizer(perm, perm_vocab)
    return {"base": llama_family["base"], "ext": ext, "perm": perm}


def _merge(run_cli, tmp_path, text, *args):
    res = run_cli(write_recipe(tmp_path, text), tmp_path / "out", "--quiet", *args)
    assert res.code == 0, res.err
    return load_tensors(tmp_path / "out")


def test_union_appends_new_tokens_and_merges_rows_by_token(tmp_path, vocab_models, run_cli):
    m = vocab_models
    out = _merge(run_cli, tmp_path, f"""merge_method: linear
base_model: {m['base']}
models: [{{model: {m['base']}}}, {{model: {m['ext']}}}]
tokenizer_source: union
""")
    base, ext = load_tensors(m["base"]), load_tensors(m["ext"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert len(tok) == 67
    assert [tok.convert_tokens_to_ids(t) for t in EXTRA] == [64, 65, 66]
    assert tok.added_tokens_decoder[64].special and not tok.added_tokens_decoder[66].special
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == 67
    assert config["eos_token_id"] == tok.eos_token_id == 2
    for name in (EMB, HEAD):
        assert out[name].shape == (67, 32)
        w5 = VOCAB.index("w5")
        torch.testing.assert_close(out[name][w5], (base[name][w5] + ext[name][w5]) / 2)
        # the base lacks the new tokens: the only model that has them gives their row
        torch.testing.assert_close(out[name][64:], ext[name][64:])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = tok("<|im_start|> w1 w2", return_tensors="pt").input_ids
    assert ids[0, 0].item() == 64 and model(ids).logits.shape[-1] == 67


def test_base_vocabulary_maps_permuted_ids(tmp_path, vocab_models, run_cli):
    m = vocab_models
    out = _merge(run_cli, tmp_path, f"""merge_method: linear
models: [{{model: {m['base']}}}, {{model: {m['perm']}}}]
tokenizer_source: base
""")
    base, perm = load_tensors(m["base"]), load_tensors(m["perm"])
    perm_vocab = VOCAB[:4] + VOCAB[4:][::-1]
    for token in ("w0", "w33", "<s>"):
        b, p = VOCAB.index(token), perm_vocab.index(token)
        torch.testing.assert_close(out[EMB][b], (base[EMB][b] + perm[EMB][p]) / 2)
    # the layers are untouched by the vocabulary mapping
    name = "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(out[name], (base[name] + perm[name]) / 2)


def test_task_arithmetic_fill_and_token_overrides_and_padding(tmp_path, vocab_models, run_cli):
    m = vocab_models
    out = _merge(run_cli, tmp_path, f"""merge_method: task_arithmetic
base_model: {m['base']}
models:
  - model: {m['ext']}
    parameters: {{weight: 0.5}}
tokenizer:
  source: union
  pad_to_multiple_of: 16
  tokens:
    w3: {{source: {{kind: zero}}, force: true}}
    w4: {{source: {m['ext']}, force: true}}
    zz: {{source: {{kind: model_token, model: {m['ext']}, token: w9}}}}
""")
    base, ext = load_tensors(m["base"]), load_tensors(m["ext"])
    emb = out[EMB]
    assert emb.shape == (80, 32)  # 67 rounded up to a multiple of 16
    assert torch.count_nonzero(emb[67:]) == 0
    w3, w4, w9, w10 = (VOCAB.index(t) for t in ("w3", "w4", "w9", "w10"))
    torch.testing.assert_close(emb[w10], base[EMB][w10] + 0.5 * (ext[EMB][w10] - base[EMB][w10]))
    assert torch.count_nonzero(emb[w3]) == 0
    torch.testing.assert_close(emb[w4], ext[EMB][w4])  # forced on the base too: no task vector
    # <|im_start|>: the base lacks it and takes ext's row, so the task vector there is zero
    torch.testing.assert_close(emb[64], ext[EMB][64])
    # zz: the base lacks it; the override gives it ext's row of w9 (ext itself has zz: unforced)
    zz = 66
    torch.testing.assert_close(emb[zz], ext[EMB][w9] + 0.5 * (ext[EMB][zz] - ext[EMB][w9]))


def test_different_vocabularies_need_a_setting(tmp_path, vocab_models, run_cli):
    m = vocab_models
    res = run_cli(write_recipe(tmp_path, f"merge_method: linear\nmodels: [{{model: {m['base']}}}, "
                                         f"{{model: {m['ext']}}}]\n"), tmp_path / "out", "--quiet")
    assert res.code == 2
    assert "tensor 'model.embed_tokens.weight' has different shapes" in res.err
    assert "set tokenizer_source (union, base or a model)" in res.err
    res = run_cli(write_recipe(tmp_path, f"""merge_method: linear
models: [{{model: {m['base']}}}, {{model: {m['ext']}}}]
tokenizer: {{source: union, tokens: {{nope: {{source: {{kind: zero}}}}}}}}
"""), tmp_path / "out", "--quiet")
    assert res.code == 2 and "tokenizer.tokens.nope: token 'nope' is not in the output" in res.err
