"""mergekit's built-in chat template names: each renders its family's prompt format, and a
recipe naming one gets it in the output's tokenizer_config.json."""

from __future__ import annotations

import json

import pytest
from transformers.utils.chat_template_utils import _compile_jinja_template

from mergekit_like.plan.chat_templates import BUILTIN_TEMPLATES
from tests.conftest import write_recipe

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi "},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]

EXPECTED = {  # CHAT rendered with add_generation_prompt, bos <s>, eos </s>
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi <|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    "<|im_start|>assistant\n",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s> [INST] Be brief.\n\nHi  [/INST] Hello!</s> [INST] Bye [/INST]",
    "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n"
    "### Instruction:\nBye\n\n### Response:\n",
    "exaone": "[|system|]Be brief.[|endofturn|]\n[|user|]Hi \n[|assistant|]Hello![|endofturn|]\n"
    "[|user|]Bye\n[|assistant|]",
}


def render(template: str, messages: list[dict[str, str]], generation: bool = True) -> str:
    return _compile_jinja_template(template).render(
        messages=messages, add_generation_prompt=generation, bos_token="<s>", eos_token="</s>"
    )


def test_every_mergekit_name_is_built_in():
    assert set(BUILTIN_TEMPLATES) == {"alpaca", "chatml", "llama3", "mistral", "exaone"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_renders_its_format(name):
    assert render(BUILTIN_TEMPLATES[name], CHAT) == EXPECTED[name]


def test_variants_without_system_message_and_generation_prompt():
    user = [{"role": "user", "content": "Hi"}]
    assert render(BUILTIN_TEMPLATES["alpaca"], user) == "### Instruction:\nHi\n\n### Response:\n"
    context = [*user, {"role": "user_context", "content": "ctx"}]
    assert (
        render(BUILTIN_TEMPLATES["alpaca"], context, False)
        == "### Instruction:\nHi\n\n### Input:\nctx"
    )
    assert (
        render(BUILTIN_TEMPLATES["exaone"], user, False) == "[|system|][|endofturn|]\n[|user|]Hi\n"
    )
    assert render(BUILTIN_TEMPLATES["mistral"], user) == "<s> [INST] Hi [/INST]"
    assert (
        render(BUILTIN_TEMPLATES["llama3"], user, False)
        == "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    )


def test_mistral_refuses_roles_out_of_turn():
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="alternate"):
        render(BUILTIN_TEMPLATES["mistral"], [{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize("name", ["llama3", "exaone"])
def test_recipe_sets_the_output_tokenizers_template(tmp_path, llama_family, run_cli, name):
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: linear
models:
  - model: {llama_family["math"]}
  - model: {llama_family["code"]}
chat_template: {name}
""",
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == BUILTIN_TEMPLATES[name]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == EXPECTED[name].replace("<s>", tok.bos_token).replace("</s>", tok.eos_token)
