"""The built-in chat templates a recipe names with ``chat_template: <name>`` (mergekit's names).

Each is a Jinja template, as Hugging Face tokenizers store them in
``tokenizer_config.json``, written here for this project. They render each family's own
prompt format; the prompts are mergekit's templates' prompts except for whitespace that
mergekit's files let slip through: its ``llama3`` puts a newline after each ``<|eot_id|>``,
its ``alpaca`` starts with two newlines when there is no system message and joins a final
instruction to the generation prompt's ``### Response:`` without a blank line, and its
``exaone`` emits the indentation of its template lines.

    chatml   <|im_start|>role\\ncontent<|im_end|>\\n ...          (generation: assistant turn)
    llama3   bos <|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|> ...
    mistral  bos [INST] (system\\n\\n)user [/INST] assistant</s> ...  (roles must alternate)
    alpaca   system\\n\\n### Instruction:\\n...\\n\\n### Input:\\n...\\n\\n### Response:\\n...
    exaone   [|system|]...[|endofturn|]\\n[|user|]...\\n[|assistant|]...[|endofturn|]\\n

This module does not import torch.
"""

from __future__ import annotations

CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

LLAMA3 = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif -%}"
)

MISTRAL = (
    "{%- set turns = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in turns -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 is even) -%}"
    "{{- raise_exception('mistral: after an optional system message, roles must alternate "
    "user, assistant, user, ...') -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- set prefix = system + '\\n\\n' if loop.first and system is defined else '' -%}"
    "{{ ' [INST] ' + prefix + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ ' ' + message['content'] + eos_token }}"
    "{%- else -%}"
    "{{- raise_exception('mistral: roles are user and assistant, after an optional system "
    "message') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

ALPACA = (
    "{%- set systems = messages | selectattr('role', 'equalto', 'system') | list -%}"
    "{%- set ns = namespace(sep='') -%}"
    "{%- if systems -%}{{ systems[-1]['content'] | trim }}{%- set ns.sep = '\\n\\n' -%}"
    "{%- endif -%}"
    "{%- set headers = {'user': '### Instruction:', 'user_context': '### Input:', "
    "'assistant': '### Response:'} -%}"
    "{%- for message in messages if message['role'] in headers -%}"
    "{{ ns.sep + headers[message['role']] + '\\n' + (message['content'] | trim) }}"
    "{%- set ns.sep = '\\n\\n' -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and not (messages and messages[-1]['role'] == 'assistant')"
    " -%}{{ ns.sep + '### Response:\\n' }}{%- endif -%}"
)

EXAONE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '[|system|][|endofturn|]\\n' }}{%- endif -%}"
    "{{ '[|' + message['role'] + '|]' + message['content'] }}"
    "{{ '\\n' if message['role'] == 'user' else '[|endofturn|]\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '[|assistant|]' }}{%- endif -%}"
)

BUILTIN_TEMPLATES: dict[str, str] = {
    "alpaca": ALPACA,
    "chatml": CHATML,
    "exaone": EXAONE,
    "llama3": LLAMA3,
    "mistral": MISTRAL,
}
"""Template text by the name a recipe gives in ``chat_template``."""
