"""The output folder: staged in a temporary sibling, metadata files, atomic rename at the end.

A failed run leaves nothing behind; an existing output is replaced only with ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

from mergekit_like.errors import Interrupted, MergeError
from mergekit_like.model_card import Provenance, model_card, recipe_header
from mergekit_like.plan import Plan
from mergekit_like.vocab import VocabPlan

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "spiece.model", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json",
    "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "processor_config.json",  # image and multimodal models
)


def partial_dir(out: Path) -> Path:
    """The staging folder of ``out``: a hidden sibling, kept after a crash for --resume."""
    return out.parent / f".{out.name}.partial"


@contextmanager
def staged_output(out: Path, force: bool, resume: bool = False) -> Iterator[Path]:
    """Yield the staging folder beside ``out``; move it to ``out`` if the body succeeds.

    A failure removes the staging folder and leaves ``out`` untouched, except when tensors
    were being written (the folder holds a resume journal) and the run was interrupted or hit
    an I/O error (a full disk): then the folder is kept and the error says how to resume.
    """
    from mergekit_like.journal import JOURNAL

    if out.exists() and not force:
        raise MergeError(f"{out}: already exists; pass --force to replace it")
    tmp = partial_dir(out)
    if tmp.exists() and not resume:
        if not force:
            raise MergeError(f"{tmp}: holds the partial output of an interrupted run; rerun "
                             "with --resume to continue it, or --force to start over")
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MergeError(f"{out}: cannot create the staging folder {tmp}: "
                         f"{exc.strerror or exc}") from None
    try:
        yield tmp
    except KeyboardInterrupt:
        if (tmp / JOURNAL).is_file():
            raise Interrupted(f"interrupted; the partial output is kept in {tmp}: rerun the "
                              "same command with --resume to continue") from None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        if (tmp / JOURNAL).is_file():
            raise MergeError(f"writing {out} failed: {exc.strerror or exc}; the partial output "
                             f"is kept in {tmp}: fix the cause (e.g. free disk space) and rerun "
                             "with --resume") from None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists() or out.is_symlink():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def write_metadata(plan: Plan, folder: Path, seed: int = 0,
                   command: Sequence[str] = ()) -> None:
    """config.json, generation_config.json, tokenizer, model card and the resolved recipe
    (with the version, ``seed`` and ``command`` line that reproduce the run)."""
    spec = plan.output
    (folder / "config.json").write_text(json.dumps(dict(spec.config), indent=2) + "\n")
    ref_dir = plan.models[spec.reference].path
    if (ref_dir / "generation_config.json").is_file():
        shutil.copyfile(ref_dir / "generation_config.json", folder / "generation_config.json")
    if plan.vocab is not None and plan.vocab.added:
        save_union_tokenizer(plan.vocab, folder)
    elif spec.tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (spec.tokenizer_dir / name).is_file():
                shutil.copyfile(spec.tokenizer_dir / name, folder / name)
    if spec.chat_template is not None:
        (folder / "chat_template.jinja").write_text(spec.chat_template)
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            cfg["chat_template"] = spec.chat_template
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    recipe_yaml = resolved_recipe_yaml(plan)
    provenance = Provenance.of(seed, command)
    (folder / "merge_recipe.yaml").write_text(recipe_header(provenance) + recipe_yaml)
    (folder / "README.md").write_text(model_card(plan, recipe_yaml, folder, provenance))


def save_union_tokenizer(vocab: VocabPlan, folder: Path) -> None:
    """The base tokenizer plus every token the plan appended, with the planned ids."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(vocab.tokenizer_dir)
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
    """Refuse an output folder that is, or contains, one of the ingredients."""
    target = out.resolve()
    for cat in plan.models:
        src = cat.path.resolve()
        if src == target or target in src.parents:
            raise MergeError(f"{out}: would overwrite ingredient model {cat.ref!r}; "
                             "choose another output folder")
