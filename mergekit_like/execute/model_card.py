"""The model card (README.md) of a merged model, and how to reproduce the run.

The card names the ingredients as a reader would find them: a hub id as the recipe wrote
it (linked, and listed as ``base_model`` metadata so the hub shows the model tree), a local
folder marked as local (never ``base_model`` metadata, which would point the hub at a
path on someone's disk). It says what kind of model this is from the output config
(``architectures`` / ``model_type``), links the merge method's paper, and records the tool's
version, the seed and the command line, as ``merge_recipe.yaml`` does in its header.

Example::

    card = model_card(plan, recipe_yaml, folder, Provenance.of(seed=0, command=("merge", ...)))
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mergekit_like.plan.build import Plan

if TYPE_CHECKING:
    from mergekit_like.recipe.models import Recipe

_SOUPS = (
    "Model soups: averaging weights of multiple fine-tuned models improves accuracy "
    "without increasing inference time",
    "https://arxiv.org/abs/2203.05482",
)
_TIES = (
    "TIES-Merging: Resolving Interference When Merging Models",
    "https://arxiv.org/abs/2306.01708",
)
_DARE = (
    "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch",
    "https://arxiv.org/abs/2311.03099",
)
_CRUMBS = (
    "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks",
    "https://arxiv.org/abs/2312.06795",
)
_DELLA = (
    "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling",
    "https://arxiv.org/abs/2406.11617",
)
#: method -> (title, url) of its papers, first the method's own (arXiv ids checked by hand)
METHOD_PAPERS: dict[str, tuple[tuple[str, str], ...]] = {
    "linear": (_SOUPS,),
    "greedy_soup": (_SOUPS,),
    "learned_soup": (_SOUPS,),
    "task_arithmetic": (
        ("Editing Models with Task Arithmetic", "https://arxiv.org/abs/2212.04089"),
    ),
    "ties": (_TIES,),
    "dare_linear": (_DARE,),
    "dare_ties": (_DARE, _TIES),
    "breadcrumbs": (_CRUMBS,),
    "breadcrumbs_ties": (_CRUMBS, _TIES),
    "della": (_DELLA, _TIES),
    "della_linear": (_DELLA,),
    "sce": (("FuseChat: Knowledge Fusion of Chat Models", "https://arxiv.org/abs/2408.07990"),),
    "model_stock": (
        (
            "Model Stock: All we need is just a few fine-tuned models",
            "https://arxiv.org/abs/2403.19522",
        ),
    ),
    "wise_ft": (("Robust fine-tuning of zero-shot models", "https://arxiv.org/abs/2109.01903"),),
    "slerp": (
        (
            "Slerp (Shoemake, Animating rotation with quaternion curves, SIGGRAPH 1985)",
            "https://en.wikipedia.org/wiki/Slerp",
        ),
    ),
    "karcher": (("Karcher mean", "https://en.wikipedia.org/wiki/Karcher_mean"),),
    "fisher": (
        ("Merging Models with Fisher-Weighted Averaging", "https://arxiv.org/abs/2111.09832"),
    ),
    "regmean": (
        (
            "Dataless Knowledge Fusion by Merging Weights of Language Models",
            "https://arxiv.org/abs/2212.09849",
        ),
    ),
    "adamerging": (
        (
            "AdaMerging: Adaptive Model Merging for Multi-Task Learning",
            "https://arxiv.org/abs/2310.02575",
        ),
        ("Editing Models with Task Arithmetic", "https://arxiv.org/abs/2212.04089"),
    ),
}
_REGMEAN_PP = (
    "RegMean++: Enhancing Effectiveness and Generalization of Regression Mean for Model Merging",
    "https://arxiv.org/abs/2508.03121",
)


def method_papers(recipe: Recipe) -> tuple[tuple[str, str], ...]:
    """The (title, url) of the papers behind a recipe's merge method, its own first
    (``regmean`` with ``datamerge.plusplus: true`` adds RegMean++)."""
    papers = METHOD_PAPERS.get(recipe.merge_method, ())
    if recipe.merge_method == "regmean" and (recipe.datamerge or {}).get(
        "plusplus"
    ):
        papers = (_REGMEAN_PP, *papers)
    return papers

#: architecture suffix -> (what kind of model, the hub's pipeline_tag)
_KINDS: tuple[tuple[str, str, str | None], ...] = (
    ("ForCausalLM", "causal language", "text-generation"),
    ("LMHeadModel", "causal language", "text-generation"),
    ("ForMaskedLM", "masked language", "fill-mask"),
    ("ForSequenceClassification", "text classification", "text-classification"),
    ("ForTokenClassification", "token classification", "token-classification"),
    ("ForQuestionAnswering", "question answering", "question-answering"),
    ("ForImageClassification", "image classification", "image-classification"),
    ("ForAudioClassification", "audio classification", "audio-classification"),
    ("ForCTC", "speech recognition", "automatic-speech-recognition"),
    ("ForSpeechSeq2Seq", "speech recognition", "automatic-speech-recognition"),
    ("ForObjectDetection", "object detection", "object-detection"),
    ("ForSemanticSegmentation", "image segmentation", "image-segmentation"),
    ("ForConditionalGeneration", "conditional generation", None),
)


@dataclass(frozen=True)
class Provenance:
    """What reproduces a run beyond its recipe: the tool's version, the seed, the command."""

    version: str
    seed: int
    command: tuple[str, ...] = ()

    @classmethod
    def of(cls, seed: int, command: Sequence[str] = ()) -> Provenance:
        from mergekit_like import __version__

        return cls(__version__, seed, tuple(command))

    def command_line(self) -> str | None:
        """The command as a shell would take it (None when not run from the command line)."""
        return shlex.join(self.command) if self.command else None


#: flags that steer how a run goes, never what it writes (the tests hold them to that)
RUN_ONLY_FLAGS = {"--resume": 0, "--force": 0, "--quiet": 0, "--num-processes": 1}


def reproducing_command(argv: Sequence[str], out: Path) -> tuple[str, ...]:
    """``merge ARGV`` as the card records it: OUT written as ``OUT``, and the flags that do
    not change the output left out, so a resumed, forced or multi-process run (or one
    into another folder) writes the same card.

    >>> reproducing_command(["r.yaml", "out", "--seed", "3", "--resume"], Path("out"))
    ('merge', 'r.yaml', 'OUT', '--seed', '3')
    """
    kept, skip, out_seen = ["merge"], 0, False
    for token in argv:
        if skip:
            skip -= 1
            continue
        flag = token.split("=", 1)[0]
        if flag in RUN_ONLY_FLAGS:
            skip = RUN_ONLY_FLAGS[flag] if "=" not in token else 0
            continue
        if not out_seen and not token.startswith("-") and len(kept) > 1 and Path(token) == out:
            kept.append("OUT")
            out_seen = True
            continue
        kept.append(token)
    return tuple(kept)


def model_kind(config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """What kind of model a config describes, and its hub pipeline tag.

    >>> model_kind({"architectures": ["ViTForImageClassification"]})
    ('image classification', 'image-classification')
    """
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
    for suffix, kind, tag in _KINDS:
        if arch.endswith(suffix):
            return kind, tag
    model_type = config.get("model_type")
    return (model_type if isinstance(model_type, str) and model_type else None), None


def recipe_header(provenance: Provenance) -> str:
    """YAML comment lines for merge_recipe.yaml: version, seed and command line."""
    lines = [f"# made by mergekit_like {provenance.version}, seed {provenance.seed}"]
    if provenance.command_line():
        lines.append(f"# command (OUT: the output folder): {provenance.command_line()}")
    return "\n".join(lines) + "\n"


def _hub_id(part: str, plan: Plan) -> bool:
    from mergekit_like.io.catalog import local_folder

    loaded = plan.recipe
    return part not in loaded.named_models and local_folder(part, loaded.path.parent) is None


def _named(ref: str, plan: Plan) -> str:
    """One ingredient as the card lists it: a linked hub id, or a local folder."""
    out = []
    for part in ref.split("+"):  # model+lora_adapter
        if _hub_id(part, plan):
            repo, _, rev = part.partition("@")
            url = f"https://huggingface.co/{repo}" + (f"/tree/{rev}" if rev else "")
            out.append(f"[{part}]({url})")
        elif part in plan.recipe.named_models:
            out.append(f"`{part}` (an earlier document's output)")
        else:
            out.append(f"`{part}` (local folder)")
    return " + LoRA ".join(out)


def _front(plan: Plan, refs: list[str], tag: str | None) -> dict[str, Any]:
    hub = [p.partition("@")[0] for r in refs for p in r.split("+") if _hub_id(p, plan)]
    front: dict[str, Any] = {}
    if hub:
        front |= {"base_model": list(dict.fromkeys(hub)), "base_model_relation": "merge"}
    front["library_name"] = "transformers"
    if tag:
        front["pipeline_tag"] = tag
    front["tags"] = ["merge", "mergekit_like", plan.recipe.recipe.merge_method]
    return front


def model_card(plan: Plan, recipe_yaml: str, folder: Path, provenance: Provenance) -> str:
    """A Hugging Face model card: front matter, what was merged and how, how to rerun."""
    recipe = plan.recipe.recipe
    refs = recipe.referenced_models()
    kind, tag = model_kind(plan.output.config)
    method = recipe.merge_method
    papers = method_papers(recipe)
    named_method = f"[`{method}`]({papers[0][1]})" if papers else f"`{method}`"
    title = recipe.name or folder.name.removeprefix(".").removesuffix(".partial")
    lines = [
        "---",
        yaml.safe_dump(_front(plan, refs, tag), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        f"This is a merge of pre-trained {kind + ' ' if kind else ''}models, made with "
        f"mergekit_like {provenance.version} using the {named_method} merge method.",
        "",
    ]
    if recipe.base_model:
        lines += [f"Base model: {_named(recipe.base_model, plan)}.", ""]
    lines += ["## Models merged", ""]
    lines += [f"- {_named(r, plan)}" for r in refs if r != recipe.base_model]
    if papers:
        lines += ["", "## Method", ""] + [f"- [{t}]({u})" for t, u in papers]
    lines += [
        "",
        "## Reproducing",
        "",
        f"mergekit_like {provenance.version}, seed {provenance.seed}"
        + (":" if provenance.command_line() else "."),
        "",
    ]
    if provenance.command_line():
        lines += [
            "```sh",
            provenance.command_line() or "",
            "```",
            "",
            "(OUT is the output folder; flags that do not change the output, such as "
            "`--resume`, are left out.)",
            "",
        ]
    lines += ["## Recipe", "", "```yaml", recipe_yaml.rstrip(), "```", ""]
    return "\n".join(lines)
