"""A tiny BERT sequence classifier family and token-id data for the evaluation-block tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB = 40
POSITIONS = 16
WORDS = [f"w{i}" for i in range(VOCAB - 4)]


def bert_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=POSITIONS,
        num_labels=3,
    )


def make_berts(root: Path, count: int = 3) -> list[Path]:
    """``count`` BERT classifiers: one random init plus seeded noise each (no tokenizer)."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(bert_config()).state_dict()
    folders = []
    for k in range(count):
        model = BertForSequenceClassification(bert_config())
        gen = torch.Generator().manual_seed(200 + k)
        model.load_state_dict(
            {
                n: t + 0.2 * torch.randn(t.shape, generator=gen) if t.is_floating_point() else t
                for n, t in base.items()
            }
        )
        folders.append(root / f"bert{k}")
        model.save_pretrained(folders[-1])
    return folders


def save_word_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over WORDS (ids 4..) with [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    ).save_pretrained(folder)


def token_rows(n: int, seed: int) -> list[dict]:
    """Rows of token ids of lengths 3..8 ([CLS] ... [SEP]) and labels 0..2."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        body = rng.integers(4, VOCAB, int(rng.integers(1, 7))).tolist()
        rows.append({"ids": [2, *body, 3], "y": int(rng.integers(0, 3))})
    return rows


def padded(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """input_ids padded with 0 to the longest row, and the attention mask."""
    width = max(len(r["ids"]) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r["ids"])] = r["ids"]
        mask[i, : len(r["ids"])] = 1
    return ids, mask


def accuracy(folder: Path, ids: np.ndarray, mask: np.ndarray, labels: list[int]) -> float:
    """The model's accuracy, computed directly with transformers."""
    import torch
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
        ).logits
    return float((logits.argmax(-1) == torch.tensor(labels)).double().mean())
