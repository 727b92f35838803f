"""The output folder's files besides the tensors (config, tokenizer, model card, recipe),
and the check that OUT overlaps no input. Staging and publishing:
:mod:`mergekit_like.execute.staging`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

from mergekit_like.errors import MergeError
from mergekit_like.execute.model_card import Provenance, model_card, recipe_header
from mergekit_like.execute.staging import partial_dir, staged_output  # noqa: F401 - re-exported
from mergekit_like.plan.build import Plan
from mergekit_like.plan.vocab import VocabPlan, load_tokenizer

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "spiece.model", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json",
    "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "processor_config.json",  # image and multimodal models
)


def write_metadata(plan: Plan, folder: Path, seed: int = 0, command: Sequence[str] = (),
                   copy_tokenizer: bool = True, model_card_file: bool = True) -> None:
    """config.json, generation_config.json, tokenizer, model card and the resolved recipe
    (with the version, ``seed`` and ``command`` line that reproduce the run).

    ``copy_tokenizer`` False (mergekit's ``--no-copy-tokenizer``): no tokenizer files (nor
    chat template) unless the recipe sets the tokenizer; ``model_card_file`` False
    (``--no-write-model-card``): no README.md.
    """
    spec = plan.output
    (folder / "config.json").write_text(json.dumps(dict(spec.config), indent=2) + "\n")
    ref_dir = plan.models[spec.reference].path
    if (ref_dir / "generation_config.json").is_file():
        shutil.copyfile(ref_dir / "generation_config.json", folder / "generation_config.json")
    tokenizer = copy_tokenizer or plan.recipe.recipe.tokenizer_config() is not None
    if plan.vocab is not None and plan.vocab.added:
        save_union_tokenizer(plan.vocab, folder, plan.recipe.trust_remote_code)
    elif spec.tokenizer_dir is not None and tokenizer:
        for name in TOKENIZER_FILES:
            if (spec.tokenizer_dir / name).is_file():
                shutil.copyfile(spec.tokenizer_dir / name, folder / name)
    if spec.chat_template is not None and tokenizer:
        (folder / "chat_template.jinja").write_text(spec.chat_template)
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            cfg["chat_template"] = spec.chat_template
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    recipe_yaml = resolved_recipe_yaml(plan)
    provenance = Provenance.of(seed, command)
    (folder / "merge_recipe.yaml").write_text(recipe_header(provenance) + recipe_yaml)
    if model_card_file:
        (folder / "README.md").write_text(model_card(plan, recipe_yaml, folder, provenance))


def save_union_tokenizer(vocab: VocabPlan, folder: Path, trust_remote_code: bool = False) -> None:
    """The base tokenizer plus every token the plan appended, with the planned ids."""
    from tokenizers import AddedToken

    tok = load_tokenizer(vocab.tokenizer_dir, trust_remote_code)
    first = len(tok)
    tok.add_tokens([AddedToken(t, special=special, normalized=not special)
                    for t, special in vocab.added])
    for i, (t, _) in enumerate(vocab.added):
        if tok.convert_tokens_to_ids(t) != first + i:
            raise MergeError(f"tokenizer union: token {t!r} got id "
                             f"{tok.convert_tokens_to_ids(t)}, planned {first + i}")
    tok.save_pretrained(folder)


def resolved_recipe_yaml(plan: Plan) -> str:
    """The recipe as validated (overrides applied, values normalised), as YAML."""
    data = plan.recipe.recipe.model_dump(mode="json", by_alias=True, exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)


def check_output_path(plan: Plan, out: Path) -> None:
    """Refuse an output folder that overlaps an input: one that is, lies inside (a folder or
    a file of it) or contains an ingredient, an adapter or the tokenizer source, once
    symlinks are resolved. ``--force`` does not change this."""
    targets = [out.resolve(), partial_dir(out).resolve()]
    for ref, src in _input_folders(plan):
        for target in targets:
            if target == src or src in target.parents or target in src.parents:
                raise MergeError(f"{out}: would overwrite ingredient model {ref!r} ({src}); "
                                 "choose an output folder outside every ingredient")


def _input_folders(plan: Plan) -> list[tuple[str, Path]]:
    """(reference, resolved folder) of every folder a plan reads from."""
    from mergekit_like.io.lora import LoraTensorInfo

    found: dict[Path, str] = {}
    for cat in plan.models:
        found.setdefault(cat.path.resolve(), cat.ref)
        files = {info.file for info in cat.tensors.values()}
        files |= {f.file for info in cat.tensors.values() if isinstance(info, LoraTensorInfo)
                  for f in (info.lora_a, info.lora_b)}
        for f in files:  # a hub snapshot's files are links into its blobs folder
            found.setdefault(f.parent.resolve(), cat.ref)
            found.setdefault(f.resolve().parent, cat.ref)
    tok = plan.output.tokenizer_dir
    if tok is not None:
        found.setdefault(tok.resolve(), str(tok))
    return [(ref, path) for path, ref in found.items()]
