"""Bag-of-words pretraining of the tiny text encoder (longlive.text.pretrain)."""

from __future__ import annotations

import pytest
import torch

from longlive.text import build_text_encoder
from longlive.text.pretrain import bag_of_words, caption_vocabulary, pretrain_bag_of_words, visible_text
from longlive.text.tiny import ByteTokenizer
from longlive.train.data import ProceduralVideos

CAPTIONS = [ProceduralVideos(32, 32, seed=3, backgrounds=("grey",), max_shapes=1).multishot_captions(i, 1, 5)[0]
            for i in range(40)]


def test_vocabulary_and_bag_of_words() -> None:
    caps = ["A red circle.", "a BLUE circle, red!"]
    vocab = caption_vocabulary(caps)
    assert vocab == ["a", "blue", "circle", "red"]
    bow = bag_of_words(caps + ["green square"], vocab)
    assert bow.tolist() == [[1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]


def test_byte_tokenizer_visible_text_is_what_the_ids_keep() -> None:
    tok = ByteTokenizer(12)  # 11 bytes + EOS
    assert tok.visible("A red circle bounces.") == "A red "  # "circle" would be cut in two: dropped
    assert tok.visible("A blue  circle") == "A blue "  # cleaning collapses the spaces, then "circ" is cut
    assert tok.visible("short one") == "short one"
    assert tok.visible("Abcdefghijklmnop") == ""  # one word longer than the budget
    for text in ("A red circle bounces.", "A blue  circle", "short one"):
        ids = tok.ids(text)[:-1]
        assert bytes(i - 3 for i in ids).decode().startswith(tok.visible(text))


def _relative_gap(enc, a: str, b: str) -> float:
    ea, eb = enc.encode([a])[0], enc.encode([b])[0]
    return float((ea - eb).norm() / ea.norm())


def test_pretraining_makes_every_word_readable_and_is_deterministic() -> None:
    seeded = build_text_encoder("tiny", seed=0, device="cpu")
    enc = build_text_encoder("tiny", seed=0, device="cpu")
    info = pretrain_bag_of_words(enc, CAPTIONS, steps=150, seed=1)
    assert info["last_loss"] < 0.2 * info["first_loss"]
    assert info["word_readout_accuracy"] > 0.99
    # targets are the words the 32-byte tokenizer keeps: "background" is cut off every caption here
    assert info["vocabulary"] == len(caption_vocabulary([visible_text(enc, c) for c in CAPTIONS]))
    assert "background" in caption_vocabulary(CAPTIONS) and "background" not in caption_vocabulary(
        [visible_text(enc, c) for c in CAPTIONS])
    # the shape word now moves the embedding at least as much as it did before, relative to the colour word
    shape_a, shape_b = "A blue circle bounces on a grey background.", "A blue square bounces on a grey background."
    colour_b = "A red circle bounces on a grey background."
    before = _relative_gap(seeded, shape_a, shape_b) / _relative_gap(seeded, shape_a, colour_b)
    after = _relative_gap(enc, shape_a, shape_b) / _relative_gap(enc, shape_a, colour_b)
    assert after > before
    # padding stays exactly zero and nothing is left requiring gradients
    emb = enc.encode([shape_a])
    _, mask = enc.tokenize([shape_a])
    assert torch.all(emb[0][mask[0] == 0] == 0)
    assert not any(p.requires_grad for p in enc.model.parameters())
    again = build_text_encoder("tiny", seed=0, device="cpu")
    pretrain_bag_of_words(again, CAPTIONS, steps=150, seed=1)
    assert torch.equal(again.encode(CAPTIONS[:3]), enc.encode(CAPTIONS[:3]))


def test_pretraining_rejects_bad_input() -> None:
    enc = build_text_encoder("tiny", seed=0, device="cpu")
    with pytest.raises(ValueError, match="at least one caption"):
        pretrain_bag_of_words(enc, [])
    with pytest.raises(ValueError, match="no words"):
        pretrain_bag_of_words(enc, ["123 !"])
    with pytest.raises(ValueError, match="steps and batch"):
        pretrain_bag_of_words(enc, ["a red circle"], steps=0)
