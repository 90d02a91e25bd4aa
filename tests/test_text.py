"""Text encoders: Wan umT5 key map vs an independent reference forward, strict loading, the tiny
encoder, and the embedding cache. CPU only; no weights or tokenizers from any hub."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from longlive.model.presets import get_preset
from longlive.text import TEXT_ENCODERS, EmbeddingCache, build_text_encoder, clean_prompt
from longlive.text.tiny import TINY_SPEC, build_tiny_text_encoder, save_tiny_text_encoder
from longlive.text.umt5 import (
    UMT5_XXL,
    WAN_T5_CHECKPOINT,
    WAN_T5_TOKENIZER,
    UMT5Spec,
    assign_state_dict,
    build_umt5_model,
    build_umt5_text_encoder,
    convert_wan_t5_state_dict,
    expected_shapes,
    load_wan_umt5,
    umt5_shapes,
    wan_umt5_shapes,
)

# Same code path as XXL at toy widths; max_distance 16 < text_len so the far-bucket clamp is exercised.
SMALL = UMT5Spec(vocab_size=64, dim=32, ffn_dim=48, num_heads=4, num_layers=2, text_len=40, max_distance=16)
WORDS = "a red cat dog runs on the beach at sunset & slowly camera pans".split()


# --- fixtures: a Wan-layout checkpoint and a local tokenizer folder ---------------------------------


def wan_state_dict(spec: UMT5Spec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in Wan's key layout (names written out here, not taken from the loader)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    d, f, h = spec.dim, spec.ffn_dim, spec.num_heads
    sd = {"token_embedding.weight": rnd(spec.vocab_size, d, std=1.0)}
    for i in range(spec.num_layers):
        p = f"blocks.{i}."
        sd[p + "norm1.weight"] = 1.0 + rnd(d, std=0.1)
        for n in "qkvo":
            sd[p + f"attn.{n}.weight"] = rnd(d, d, std=d**-0.5)
        sd[p + "norm2.weight"] = 1.0 + rnd(d, std=0.1)
        sd[p + "ffn.gate.0.weight"] = rnd(f, d, std=d**-0.5)
        sd[p + "ffn.fc1.weight"] = rnd(f, d, std=d**-0.5)
        sd[p + "ffn.fc2.weight"] = rnd(d, f, std=f**-0.5)
        sd[p + "pos_embedding.embedding.weight"] = rnd(spec.num_buckets, h, std=1.0)
    sd["norm.weight"] = 1.0 + rnd(d, std=0.1)
    return sd


def make_tokenizer_dir(path: Path) -> Path:
    """A word-level fast tokenizer with T5's special ids (pad 0, eos 1, unk 2), EOS appended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A fake Wan release folder: the T5 checkpoint (Wan names) and google/umt5-xxl/ beside it."""
    root = tmp_path_factory.mktemp("wan_release")
    sd = wan_state_dict(SMALL)
    torch.save(sd, root / WAN_T5_CHECKPOINT)
    make_tokenizer_dir(root / WAN_T5_TOKENIZER)
    return root, sd


# --- independent float64 reference of Wan's T5 encoder ------------------------------------------------


def ref_bucket(rel: int, num_buckets: int, max_distance: int) -> int:
    """Bidirectional T5 bucket of relative position rel = key_pos - query_pos."""
    half = num_buckets // 2
    base = half if rel > 0 else 0
    n = abs(rel)
    exact = half // 2
    if n < exact:
        return base + n
    far = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (half - exact))
    return base + min(far, half - 1)


def ref_rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def ref_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def ref_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, spec: UMT5Spec):
    sd = {k: v.double() for k, v in sd.items()}
    b, n = ids.shape
    h, hd = spec.num_heads, spec.dim // spec.num_heads
    buckets = torch.tensor(
        [[ref_bucket(k - q, spec.num_buckets, spec.max_distance) for k in range(n)] for q in range(n)]
    )
    key_bias = torch.zeros(b, 1, 1, n, dtype=torch.float64).masked_fill(
        mask[:, None, None, :] == 0, -math.inf
    )
    x = sd["token_embedding.weight"][ids]
    for i in range(spec.num_layers):
        p = f"blocks.{i}."
        y = ref_rms(x, sd[p + "norm1.weight"])
        q, k, v = ((y @ sd[p + f"attn.{c}.weight"].T).reshape(b, n, h, hd) for c in "qkv")
        rel_bias = sd[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)  # [h, q, k]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) + rel_bias + key_bias  # no 1/sqrt(d) in T5
        att = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, n, h * hd)
        x = x + att @ sd[p + "attn.o.weight"].T
        y = ref_rms(x, sd[p + "norm2.weight"])
        gated = ref_gelu_tanh(y @ sd[p + "ffn.gate.0.weight"].T) * (y @ sd[p + "ffn.fc1.weight"].T)
        x = x + gated @ sd[p + "ffn.fc2.weight"].T
    return ref_rms(x, sd["norm.weight"])


PROMPTS = [
    "a red cat runs on the beach at sunset",
    "  dog   &amp; cat\n",  # cleaned to "dog & cat"
    " ".join(WORDS * 4),  # longer than text_len: truncated, EOS kept
    "camera pans slowly over unknownword",
]


# float64 is not 1e-12 exact: transformers' RMSNorm takes the variance in float32 even for float64.
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 2e-4)])
def test_umt5_matches_reference(release, dtype, tol):
    root, sd = release
    enc = build_umt5_text_encoder(root, spec=SMALL, device="cpu", dtype=dtype)
    ids, mask = enc.tokenize(PROMPTS)
    out = enc.encode(PROMPTS)
    assert out.shape == (len(PROMPTS), SMALL.text_len, SMALL.dim) and out.dtype == dtype
    ref = ref_forward(sd, ids, mask, SMALL)
    valid = mask.bool()
    err = (out.double() - ref)[valid].abs().max().item()
    assert err < tol, err
    assert (out[~valid] == 0).all() and not torch.signbit(out[~valid]).any()
    assert (out[valid].abs().sum(-1) > 0).all()


def test_umt5_tokenizer_path(release):
    root, _ = release
    enc = build_umt5_text_encoder(root, spec=SMALL, device="cpu", dtype=torch.float32)
    ids, mask = enc.tokenize(PROMPTS)
    w = {t: i + 3 for i, t in enumerate(WORDS)}
    assert clean_prompt(PROMPTS[1]) == "dog & cat"
    assert ids[1, :4].tolist() == [w["dog"], w["&"], w["cat"], 1] and mask[1].sum() == 4
    assert ids[1, 4:].eq(0).all()
    assert mask[2].all() and ids[2, -1] == 1  # truncated to text_len with EOS last
    assert ids[3, 4] == 2  # unknown word -> <unk>
    assert enc.identity.startswith("umt5-xxl/float32/")


def test_xxl_meta_key_set():
    """The XXL config maps onto exactly Wan's key set with the published shapes, on the meta device."""
    shapes = wan_umt5_shapes(UMT5_XXL)
    expected = {"token_embedding.weight": (256384, 4096), "norm.weight": (4096,)}
    for i in range(24):
        p = f"blocks.{i}."
        expected |= {p + "norm1.weight": (4096,), p + "norm2.weight": (4096,)}
        expected |= {p + f"attn.{c}.weight": (4096, 4096) for c in "qkvo"}
        expected |= {p + "ffn.gate.0.weight": (10240, 4096), p + "ffn.fc1.weight": (10240, 4096)}
        expected |= {p + "ffn.fc2.weight": (4096, 10240), p + "pos_embedding.embedding.weight": (32, 64)}
    assert len(shapes) == len(expected) == 2 + 24 * 10
    assert shapes == expected

    model = build_umt5_model(UMT5_XXL, "meta")
    cfg = model.config
    assert (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance) == (32, 128)
    assert cfg.dense_act_fn == "gelu_new" and cfg.is_gated_act and cfg.d_kv == 64
    meta_sd = {k: torch.empty(s, device="meta", dtype=torch.bfloat16) for k, s in expected.items()}
    assign_state_dict(model, convert_wan_t5_state_dict(meta_sd, model))
    assert model.encoder.embed_tokens.weight is model.shared.weight
    assert sum(p.numel() for p in model.parameters()) == sum(math.prod(s) for s in expected.values())
    assert sum(p.numel() for p in model.parameters()) == 5_680_910_336


@pytest.mark.parametrize("spec", [SMALL, TINY_SPEC, UMT5_XXL], ids=["small", "tiny", "xxl"])
def test_umt5_shapes_match_the_model(spec):
    """The spec-only key/shape table (checked before any model is built) is the built model's, key for key."""
    assert umt5_shapes(spec) == expected_shapes(build_umt5_model(spec, "meta"))


def test_tiny_encoder_builds_on_first_encode_only(tmp_path):
    """A cache hit never builds the model; the lazily built model encodes exactly as an eager one."""
    eager = build_tiny_text_encoder(seed=2)
    ref = eager.encode(["a red cat", "a blue dog"])
    lazy = build_tiny_text_encoder(seed=2)
    assert not lazy.built and (lazy.dim, lazy.dtype, lazy.device.type) == (TINY_SPEC.dim, torch.float32, "cpu")
    cache = EmbeddingCache(tmp_path)
    first = build_tiny_text_encoder(seed=2)
    assert torch.equal(cache.encode(first, ["a red cat", "a blue dog"]), ref) and first.built
    assert torch.equal(cache.encode(lazy, ["a blue dog", "a red cat"]), ref.flip(0)) and not lazy.built
    assert torch.equal(lazy.encode(["a red cat"]), ref[:1]) and lazy.built


def _bad(sd: dict[str, torch.Tensor], kind: str) -> tuple[dict[str, torch.Tensor], str]:
    sd = dict(sd)
    if kind == "extra":
        sd["blocks.0.attn.bias"] = torch.zeros(1)
        return sd, "blocks.0.attn.bias"
    if kind == "missing":
        del sd["blocks.1.ffn.fc1.weight"]
        return sd, "blocks.1.ffn.fc1.weight"
    sd["blocks.1.pos_embedding.embedding.weight"] = torch.zeros(SMALL.num_buckets, SMALL.num_heads + 1)
    return sd, "blocks.1.pos_embedding.embedding.weight"


@pytest.mark.parametrize("kind", ["extra", "missing", "shape"])
def test_umt5_strict(release, tmp_path, kind):
    _, sd = release
    bad, key = _bad(sd, kind)
    path = tmp_path / WAN_T5_CHECKPOINT
    torch.save(bad, path)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_wan_umt5(path, SMALL)


def test_umt5_missing_files(release, tmp_path):
    root, _ = release
    with pytest.raises(FileNotFoundError, match=WAN_T5_CHECKPOINT):
        build_text_encoder("umt5-xxl")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / WAN_T5_CHECKPOINT)):
        build_text_encoder("umt5-xxl", checkpoint=tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "x.pth")):
        load_wan_umt5(tmp_path / "x.pth", SMALL)
    (tmp_path / WAN_T5_CHECKPOINT).symlink_to(root / WAN_T5_CHECKPOINT)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / WAN_T5_TOKENIZER)):
        build_text_encoder("umt5-xxl", checkpoint=tmp_path / WAN_T5_CHECKPOINT)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_umt5_text_encoder(root, tokenizer_dir=tmp_path / "nowhere", spec=SMALL)


def test_unknown_encoder():
    with pytest.raises(ValueError, match="known text encoders: tiny, umt5-xxl"):
        build_text_encoder("clip")
    assert set(TEXT_ENCODERS) == {"tiny", "umt5-xxl"}


# --- tiny encoder ---------------------------------------------------------------------------------------


def test_tiny_matches_preset_and_is_deterministic():
    preset = get_preset("tiny")
    torch.manual_seed(123)  # the global RNG must not matter
    a = build_text_encoder(preset.text_encoder, device="cpu")
    torch.manual_seed(456)
    b = build_text_encoder("tiny", device="cpu")
    assert (a.dim, a.max_len) == (preset.text_dim, preset.text_len) == (TINY_SPEC.dim, TINY_SPEC.text_len)
    prompts = ["a red cat", "a red dog", "ünïcödé 🎬 " * 10]
    ea, eb = a.encode(prompts), b.encode(prompts)
    assert ea.shape == (3, preset.text_len, preset.text_dim) and ea.dtype == torch.float32
    assert torch.equal(ea, eb) and a.identity == b.identity
    assert a.model.encoder.embed_tokens.weight is a.model.shared.weight
    assert not torch.equal(ea[0], ea[1])
    lengths = [len(p.encode()) + 1 for p in prompts[:2]]  # bytes + EOS
    for i, n in enumerate(lengths):
        assert (ea[i, n:] == 0).all() and (ea[i, :n].abs().sum(-1) > 0).all()
    assert (ea[2].abs().sum(-1) > 0).all()  # truncated: every position is a token
    c = build_tiny_text_encoder(seed=1)
    assert c.identity != a.identity and not torch.equal(c.encode(prompts[:1]), ea[:1])


def test_tiny_save_load(tmp_path):
    a = build_tiny_text_encoder(seed=3)
    path = save_tiny_text_encoder(a, tmp_path / "sub" / "tiny_text.safetensors")
    b = build_text_encoder("tiny", checkpoint=path, device="cpu")
    assert b.identity != a.identity and "ckpt=" in b.identity
    prompts = ["hello", "a much longer prompt about a cat"]
    assert torch.equal(a.encode(prompts), b.encode(prompts))
    assert b.model.encoder.embed_tokens.weight is b.model.shared.weight
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        build_text_encoder("tiny", checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="tokenizer_dir"):
        build_text_encoder("tiny", tokenizer_dir=tmp_path)


def test_tiny_checkpoint_strict(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = save_tiny_text_encoder(build_tiny_text_encoder(), tmp_path / "t.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    sd["encoder.block.0.layer.0.SelfAttention.extra"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"SelfAttention\.extra"):
        build_tiny_text_encoder(tmp_path / "bad.safetensors")


# --- cache ----------------------------------------------------------------------------------------------


class Counting:
    """Wraps an encoder and counts how many prompts it really encodes."""

    def __init__(self, inner, identity: str | None = None):
        self.inner, self.calls, self.prompts = inner, 0, 0
        self.identity = identity or inner.identity
        self.dim, self.max_len, self.device, self.dtype = inner.dim, inner.max_len, inner.device, inner.dtype

    def encode(self, prompts):
        self.calls += 1
        self.prompts += len(prompts)
        return self.inner.encode(prompts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_hits_and_round_trip(tmp_path, dtype):
    enc = Counting(build_tiny_text_encoder(dtype=dtype))
    cache = EmbeddingCache(tmp_path / "cache")
    prompts = ["a cat", "a dog", "a cat"]
    first = cache.encode(enc, prompts)
    assert enc.calls == 1 and enc.prompts == 2  # duplicates encoded once
    assert first.dtype == dtype and torch.equal(first, enc.inner.encode(prompts))
    second = cache.encode(enc, prompts)
    assert enc.calls == 1  # nothing recomputed
    assert second.dtype == dtype and torch.equal(second.view(torch.uint8), first.view(torch.uint8))
    cache.encode(enc, ["a dog", "a bird"])
    assert enc.calls == 2 and enc.prompts == 3  # only the new prompt
    other = Counting(enc.inner, identity=enc.identity + "/other")
    cache.encode(other, ["a cat"])
    assert other.calls == 1  # different identity -> different entry
    assert cache.path(enc.identity, "a cat") != cache.path(other.identity, "a cat")
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 4


def test_cache_bit_exact_zero_signs(tmp_path):
    """Only +0.0 trailing rows are trimmed; a -0.0 in the last row survives the round trip."""
    cache = EmbeddingCache(tmp_path)
    emb = torch.zeros(6, 4)
    emb[0] = torch.tensor([1.0, -2.0, 0.0, 3.0])
    emb[3, 1] = -0.0
    cache.put("id", "p", emb)
    back = cache.get("id", "p")
    assert torch.equal(back.view(torch.int32), emb.view(torch.int32))
    assert cache.get("id2", "p") is None and cache.get("id", "q") is None
