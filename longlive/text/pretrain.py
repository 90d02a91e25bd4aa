"""Give the tiny text encoder caption semantics: a short bag-of-words pretraining on the training captions.

The real model's umT5-XXL arrives pretrained; every token of its output already says what the caption is about.
The tiny encoder's seeded weights do not: with UTF-8 bytes, "circle" and "square" differ in six bytes at the
same positions, and in the tiny default the shape word moved the first chunk a sixth as much as the colour word
(reports/tiny-default). This objective makes every output token predict, through a linear head that is thrown
away afterwards, which vocabulary words the caption contains (multi-label BCE), so each word of the caption is
linearly readable from every token, the way a pretrained encoder's contextual embeddings are. It needs only the
captions, no video, and runs in seconds on CPU.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import UMT5TextEncoder, clean_prompt

_WORD = re.compile(r"[a-z]+")


def visible_text(encoder: UMT5TextEncoder, caption: str) -> str:
    """What of `caption` the encoder's tokenizer keeps: words past the tiny encoder's 32 bytes are never seen, so
    they cannot be targets (other tokenizers: the whole caption)."""
    visible = getattr(encoder._tokenize, "visible", None)
    return visible(caption) if visible is not None else caption


def caption_vocabulary(captions: Sequence[str]) -> list[str]:
    """Sorted lower-case words of the (cleaned) captions."""
    return sorted({w for c in captions for w in _WORD.findall(clean_prompt(c).lower())})


def bag_of_words(captions: Sequence[str], vocab: Sequence[str]) -> Tensor:
    """Multi-hot float32 [N, V]: which vocabulary words each caption contains (unknown words are ignored)."""
    index = {w: i for i, w in enumerate(vocab)}
    out = torch.zeros(len(captions), len(vocab))
    for n, c in enumerate(captions):
        for w in _WORD.findall(clean_prompt(c).lower()):
            if w in index:
                out[n, index[w]] = 1.0
    return out


def token_word_logits(encoder: UMT5TextEncoder, head: torch.nn.Linear, ids: Tensor, mask: Tensor) -> Tensor:
    """[N, L, V] logits of the head on every token of the encoder's output (with gradients)."""
    hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return head(hidden)


def word_readout_accuracy(encoder: UMT5TextEncoder, head: torch.nn.Linear, captions: Sequence[str],
                          vocab: Sequence[str]) -> float:
    """Fraction of (valid token, word) pairs whose presence the head gets right (logit > 0 ⇔ word present)."""
    ids, mask = encoder.tokenize(captions)
    with torch.no_grad():
        logits = token_word_logits(encoder, head, ids.to(encoder.device), mask.to(encoder.device))
    target = bag_of_words([visible_text(encoder, c) for c in captions], vocab).to(logits.device)
    target = target[:, None, :].expand_as(logits)
    valid = mask.to(logits.device).bool()[..., None].expand_as(logits)
    return float(((logits > 0) == (target > 0.5))[valid].float().mean())


def pretrain_bag_of_words(encoder: UMT5TextEncoder, captions: Sequence[str], *, steps: int = 300, lr: float = 3e-3,
                          batch: int = 32, seed: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """Train `encoder`'s weights in place so that every valid output token predicts the caption's bag of words.

    The targets are the words the tokenizer keeps (`visible_text`). Deterministic given `seed` (its own generator
    draws the batches and the head's init). Returns the vocabulary
    size, first and last loss and the word-readout accuracy of the final head on the distinct captions.
    """
    distinct = sorted(set(captions))
    if not distinct:
        raise ValueError("pretrain_bag_of_words needs at least one caption")
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    vocab = caption_vocabulary([visible_text(encoder, c) for c in distinct])
    if not vocab:
        raise ValueError("the captions contain no words (a-z) to predict")
    gen = torch.Generator().manual_seed(seed)
    model = encoder.model
    head = torch.nn.Linear(encoder.dim, len(vocab))
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * encoder.dim**-0.5)
        head.bias.zero_()
    head = head.to(encoder.device)
    ids_all, mask_all = encoder.tokenize(distinct)
    target_all = bag_of_words([visible_text(encoder, c) for c in distinct], vocab)
    params = list(model.parameters())
    model.requires_grad_(True)  # kept in eval mode: no dropout, so the result depends on `seed` alone
    opt = torch.optim.Adam(params + list(head.parameters()), lr=lr)
    first = last = float("nan")
    try:
        for step in range(steps):
            pick = torch.randint(len(distinct), (min(batch, len(distinct)),), generator=gen)
            ids, mask = ids_all[pick].to(encoder.device), mask_all[pick].to(encoder.device)
            logits = token_word_logits(encoder, head, ids, mask)
            target = target_all[pick].to(logits.device)[:, None, :].expand_as(logits)
            per = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(-1)
            loss = (per * mask).sum() / mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = loss.item()
            if step == 0:
                first = last
    finally:
        model.requires_grad_(False)
    acc = word_readout_accuracy(encoder, head, distinct, vocab)
    result = {"captions": len(distinct), "vocabulary": len(vocab), "steps": steps, "first_loss": first,
              "last_loss": last, "word_readout_accuracy": acc}
    if log is not None:
        log(f"text encoder: bag-of-words pretraining {result}")
    return result
