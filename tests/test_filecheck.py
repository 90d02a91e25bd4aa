"""File checks before loading (longlive.filecheck, issue 19 item 2): every kind of file the project loads, damaged in
every common way (empty, random bytes, truncated at several points, another format), is rejected with a message that
names the file and says what is wrong and what was expected — before anything is built or written — and valid files
still load bit-identically. The files are written by the project's own savers in the published layouts."""

from __future__ import annotations

import io
import json
import random
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import longlive.filecheck as fc
from longlive.cli import main
from longlive.filecheck import FileCheckError, check_image, check_weights, sniff
from longlive.infer.latents import read_latents
from longlive.infer.training_weights import read_checkpoint
from longlive.infer.video import VideoRequest, validate
from longlive.model.checkpoint import load_generator, read_generator_file, save_generator
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.quant.nvfp4 import quantize_nvfp4
from longlive.quant.nvfp4_checkpoint import load_nvfp4_generator, save_nvfp4_generator
from longlive.quant.recipes import attach_lora, load_lora, merge_lora
from longlive.text.tiny import build_tiny_text_encoder, load_tiny_state_dict, save_tiny_text_encoder
from longlive.text.umt5 import UMT5Spec, load_state_dict_file, load_wan_umt5, wan_umt5_shapes
from longlive.train.checkpoint import (
    capture_rng,
    checkpoint_path,
    load_checkpoint,
    load_latest,
    read_generator_weights,
    save_checkpoint,
)
from longlive.train.lora import merge_lora_into_checkpoint, save_lora
from longlive.vae.loading import build_vae, load_vae
from longlive.vae.pca_codec import save_codec

TINY = get_preset("tiny")
SMALL_T5 = UMT5Spec(vocab_size=64, dim=32, ffn_dim=48, num_heads=4, num_layers=2, text_len=40, max_distance=16)
DAMAGES = ("empty", "random", "cut_1", "cut_10%", "cut_50%", "cut_90%", "cut_size-1")


def equal_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same keys and bit-identical tensors (dtype, shape, bytes)."""
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], b[k]
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8)), k


def damage(path: Path, how: str) -> None:
    """Damage a file in place: empty, random bytes of its size, or cut to 1 byte / a fraction / its size − 1."""
    data = path.read_bytes()
    if how == "empty":
        out = b""
    elif how == "random":
        out = random.Random(7).randbytes(len(data))
    elif how == "cut_1":
        out = data[:1]
    elif how == "cut_size-1":
        out = data[:-1]
    else:
        out = data[: len(data) * int(how.removeprefix("cut_").removesuffix("%")) // 100]
    path.write_bytes(out)


def expected_damage(how: str) -> str:
    """What the message must say for each damage (whatever the container)."""
    return {"empty": r"an empty file \(0 bytes\)", "random": "unrecognised bytes",
            "cut_1": "too short"}.get(how, r"truncated|damaged legacy torch pickle")


# -- the kinds of file, each made by the project's own saver --------------------------------------------------------


def make_generator(d: Path) -> tuple[Path, Any]:
    model = build_model(TINY, seed=1)
    return save_generator(model, d / "model_bf16.pt"), dict(model.state_dict())


def make_nvfp4(d: Path) -> tuple[Path, Any]:
    g = torch.Generator().manual_seed(0)
    q = {n: quantize_nvfp4(torch.randn(32, 64, generator=g).to(torch.bfloat16), rule="mse")
         for n in ("blocks.0.self_attn.q", "blocks.0.ffn.0")}
    other = {"blocks.0.self_attn.q.bias": torch.randn(32, generator=g).to(torch.bfloat16),
             "head.head.weight": torch.randn(12, 64, generator=g).to(torch.bfloat16)}
    return save_nvfp4_generator(d / "model_4o6.pt", q, other, "mse"), (q, other)


def make_shards(d: Path) -> tuple[Path, Any]:
    folder = d / "shards"
    folder.mkdir()
    sd = {k: v.contiguous() for k, v in build_model(TINY, seed=2).state_dict().items()}
    keys = sorted(sd)
    names = ("diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors")
    parts = (keys[:10], keys[10:])
    for name, part in zip(names, parts, strict=True):
        save_file({k: sd[k] for k in part}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: n for n, part in zip(names, parts, strict=True) for k in part}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return folder, sd


def make_vae_pth(d: Path) -> tuple[Path, Any]:
    state = {k: v.clone() for k, v in build_vae("tiny").state_dict().items()}
    torch.save(state, d / "Wan2.2_VAE.pth")
    return d / "Wan2.2_VAE.pth", state


def make_vae_legacy(d: Path) -> tuple[Path, Any]:
    state = {k: v.clone() for k, v in build_vae("tiny").state_dict().items()}
    torch.save(state, d / "Wan2.1_VAE.pth", _use_new_zipfile_serialization=False)
    return d / "Wan2.1_VAE.pth", state


def make_codec(d: Path) -> tuple[Path, Any]:
    codec = build_vae("tiny-pca")
    save_codec(codec, d / "vae.safetensors")
    return d / "vae.safetensors", {k: v.clone() for k, v in codec.state_dict().items()}


def make_tiny_text(d: Path) -> tuple[Path, Any]:
    path = save_tiny_text_encoder(build_tiny_text_encoder(), d / "text_encoder.safetensors")
    return path, None


def make_umt5(d: Path) -> tuple[Path, Any]:
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(*shape, generator=g).to(torch.bfloat16) for k, shape in wan_umt5_shapes(SMALL_T5).items()}
    torch.save(sd, d / "models_t5_umt5-xxl-enc-bf16.pth")
    return d / "models_t5_umt5-xxl-enc-bf16.pth", sd


def lora_pairs_for(layers: tuple[int, ...], rank: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    out = {}
    for i in layers:
        m = f"base_model.model.blocks.{i}.self_attn.q"
        out[f"{m}.lora_A.weight"] = torch.randn(rank, TINY.dim, generator=g)
        out[f"{m}.lora_B.weight"] = torch.randn(TINY.dim, rank, generator=g)
    return out


def make_lora(d: Path) -> tuple[Path, Any]:
    pairs = lora_pairs_for((0, 1))
    return save_lora(d / "lora.pt", pairs, step=3, lora_rank=4, alpha=4), pairs


def make_lora_safetensors(d: Path) -> tuple[Path, Any]:
    pairs = lora_pairs_for((0,))
    save_file(pairs, str(d / "adapter.safetensors"))
    return d / "adapter.safetensors", pairs


def make_training(d: Path) -> tuple[Path, Any]:
    sd = {k: v.clone() for k, v in build_model(TINY, seed=3).state_dict().items()}
    state = {"step": 3, "model": sd, "ema": {"head.head.weight": sd["head.head.weight"] + 1}, "optim": {"state": {}},
             "rng": capture_rng(), "config": {"lr": 1e-4, "betas": (0.9, 0.99)}, "data": {"index": 6}, "world": 1}
    return save_checkpoint(checkpoint_path(d / "run", 3), state), state


def make_latents(d: Path) -> tuple[Path, Any]:
    lat = torch.randn(1, TINY.out_channels, 2, 3, 4, generator=torch.Generator().manual_seed(4))
    save_file({"latents": lat}, str(d / "latents.safetensors"))
    return d / "latents.safetensors", lat


def make_image(d: Path, suffix: str = ".png") -> tuple[Path, Any]:
    px = torch.randint(0, 256, (48, 64, 3), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    Image.fromarray(px.numpy()).save(d / f"first{suffix}")  # noise: incompressible, every cut lands in the pixels
    return d / f"first{suffix}", px


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable[[Path], tuple[Path, Any]]
    load: Callable[[Path], Any]
    layout: fc.Layout  # the expected layout, which every message must name
    check: Callable[[Any, Any], None]  # loaded vs what was saved: bit-identical


def _nvfp4_same(got: Any, ref: Any) -> None:
    (q, other), (q2, other2, _) = ref, got
    equal_tensors(other, other2)
    for n in q:
        assert torch.equal(q[n].values, q2[n].values) and torch.equal(q[n].amax, q2[n].amax)
        assert torch.equal(q[n].scales.view(torch.uint8), q2[n].scales.view(torch.uint8))


def _tiny_text_same(got: Any, ref: Any) -> None:
    want = {k: v for k, v in build_tiny_text_encoder().model.state_dict().items() if k in got}
    equal_tensors(got, want)


def _training_same(got: Any, ref: Any) -> None:
    equal_tensors(got["model"], ref["model"])
    equal_tensors(got["ema"], ref["ema"])
    assert got["step"] == 3 and got["config"] == ref["config"] and got["data"] == {"index": 6}


def _same_vae(got: Any, ref: Any) -> None:
    equal_tensors({k: got[k] for k in ref}, ref)  # the loader adds its latent-stat buffers


KINDS = [
    Kind("generator", make_generator, lambda p: read_generator_file(p)[0], fc.GENERATOR, equal_tensors),
    Kind("nvfp4", make_nvfp4, load_nvfp4_generator, fc.NVFP4_GENERATOR, _nvfp4_same),
    Kind("vae_pth", make_vae_pth, lambda p: load_vae("tiny", p).state_dict(), fc.VAE, _same_vae),
    Kind("vae_legacy", make_vae_legacy, lambda p: load_vae("tiny", p).state_dict(), fc.VAE, _same_vae),
    Kind("vae_codec", make_codec, lambda p: load_vae("tiny-pca", p).state_dict(), fc.VAE, _same_vae),
    Kind("tiny_text", make_tiny_text, load_tiny_state_dict, fc.TINY_TEXT, _tiny_text_same),
    Kind("umt5", make_umt5, load_state_dict_file, fc.UMT5, equal_tensors),
    Kind("lora", make_lora, lambda p: load_lora(p)["generator_lora"], fc.LORA, equal_tensors),
    Kind("lora_safetensors", make_lora_safetensors, lambda p: load_lora(p)["generator_lora"], fc.LORA, equal_tensors),
    Kind("training", make_training, load_checkpoint, fc.TRAINING, _training_same),
    Kind("latents", make_latents, read_latents, fc.LATENTS, lambda got, ref: equal_tensors({"x": got}, {"x": ref})),
]
KIND_IDS = [k.name for k in KINDS]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_valid_files_load_bit_identically(kind: Kind, tmp_path: Path) -> None:
    path, ref = kind.make(tmp_path)
    assert check_weights(path, kind.layout) == sniff(path)[0]
    kind.check(kind.load(path), ref)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_damaged_files_are_named_before_loading(kind: Kind, how: str, tmp_path: Path) -> None:
    path, _ = kind.make(tmp_path)
    damage(path, how)
    with pytest.raises(FileCheckError) as err:
        kind.load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and f"expected {kind.layout.description}" in msg, msg
    assert re.search(expected_damage(how), msg), msg
    for internal in ("_use_new_zipfile_serialization", "Unsupported operand", "header too large", "invalid load key"):
        assert internal not in msg


def _torch_zip_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"x": torch.ones(2)}, buf)  # a torch zip archive's bytes
    return buf.getvalue()


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_another_format_under_the_name_is_named(kind: Kind, tmp_path: Path) -> None:
    """A safetensors file where a torch archive is expected, and a torch archive where a safetensors file is."""
    path, _ = kind.make(tmp_path)
    if path.suffix == ".safetensors":
        path.write_bytes(_torch_zip_bytes())
        want = "a torch zip archive, not a safetensors file"
    else:
        save_file({"x": torch.ones(2)}, str(path))
        want = "a safetensors file, not a torch zip archive or legacy torch pickle"
    with pytest.raises(FileCheckError) as err:
        kind.load(path)
    assert str(path) in str(err.value) and want in str(err.value) and kind.layout.description in str(err.value)


# -- nothing built, nothing written -----------------------------------------------------------------------------


def test_a_damaged_generator_leaves_the_model_untouched(tmp_path: Path) -> None:
    path, _ = make_generator(tmp_path)
    damage(path, "cut_50%")
    model = build_model(TINY, seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FileCheckError, match="truncated or damaged torch zip archive"):
        load_generator(model, path)
    equal_tensors(dict(model.state_dict()), before)


def test_damaged_vae_and_text_encoder_build_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    monkeypatch.setattr("longlive.vae.loading.build_vae", lambda *a, **k: built.append(a))
    monkeypatch.setattr("longlive.text.umt5.build_umt5_model", lambda *a, **k: built.append(a))
    vae, _ = make_vae_pth(tmp_path)
    t5, _ = make_umt5(tmp_path)
    for p in (vae, t5):
        damage(p, "cut_90%")
    with pytest.raises(FileCheckError, match="Wan2.2_VAE.pth"):
        load_vae("tiny", vae)
    with pytest.raises(FileCheckError, match="models_t5_umt5-xxl-enc-bf16.pth"):
        load_wan_umt5(t5, SMALL_T5)
    assert built == []


@pytest.mark.parametrize("which", ["base", "lora"])
def test_lora_merge_with_a_damaged_file_writes_nothing(which: str, tmp_path: Path, monkeypatch) -> None:
    base, _ = make_generator(tmp_path)
    lora, _ = make_lora(tmp_path)
    damage(base if which == "base" else lora, "random")
    built = []
    monkeypatch.setattr("longlive.train.lora.build_model", lambda *a, **k: built.append(a))
    out = tmp_path / "out" / "merged.pt"
    with pytest.raises(FileCheckError, match=re.escape(str(base if which == "base" else lora))):
        merge_lora_into_checkpoint(base, lora, out)
    assert built == [] and not out.parent.exists()


def test_lora_naming_a_missing_layer_is_named_with_the_layer_count(tmp_path: Path) -> None:
    base, _ = make_generator(tmp_path)
    lora = save_lora(tmp_path / "deep.pt", lora_pairs_for((0, 999)), lora_rank=4, alpha=4)
    out = tmp_path / "merged.pt"
    with pytest.raises(ValueError, match=r"blocks\.999\.self_attn\.q\.lora_A/lora_B .*2 layers, blocks\.0 … blocks\.1"):
        merge_lora_into_checkpoint(base, lora, out)
    assert not out.exists()
    model = build_model(TINY, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for apply in (merge_lora, attach_lora):
        with pytest.raises(ValueError, match=r"deep\.pt: the LoRA keys blocks\.999\.self_attn\.q"):
            apply(model, load_lora(lora)["generator_lora"], source=str(lora))
        equal_tensors(dict(model.state_dict()), before)  # block 0 was not merged or wrapped before the error


def test_training_checkpoints_damaged_or_foreign(tmp_path: Path) -> None:
    path, state = make_training(tmp_path)
    run = path.parents[1]
    damage(path, "cut_50%")
    for load in (load_checkpoint, read_checkpoint, read_generator_weights, lambda p: load_latest(run)):
        with pytest.raises(FileCheckError, match=re.escape(str(path)) + ".*truncated or damaged torch zip"):
            load(path)
    torch.save({"step": 1, "fn": Path("x")}, path)  # a pickled object beyond tensors: weights_only refuses it
    with pytest.raises(FileCheckError, match="Python objects other than tensors"):
        load_checkpoint(path)


# -- folders of shards ------------------------------------------------------------------------------------------


def test_shard_folder_round_trip_and_damage(tmp_path: Path) -> None:
    folder, sd = make_shards(tmp_path)
    equal_tensors(read_generator_file(folder)[0], sd)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    shard = sorted(folder.glob("*-00002-of-00002.safetensors"))[0]
    data = shard.read_bytes()
    for how in DAMAGES:
        shard.write_bytes(data)
        damage(shard, how)
        with pytest.raises(FileCheckError) as err:
            read_generator_file(folder)
        assert str(shard) in str(err.value) and re.search(expected_damage(how), str(err.value))
    shard.write_bytes(data)
    text = index.read_text()
    index.write_text(text.replace("00002-of-00002", "00003-of-00002"))
    with pytest.raises(FileCheckError, match=r"index\.json: a shard index naming shard .*00003-of-00002.* not in the"):
        read_generator_file(folder)
    index.write_text(text[: len(text) // 2])
    with pytest.raises(FileCheckError, match=r"index\.json: a damaged shard index"):
        read_generator_file(folder)
    moved = json.loads(text)
    key = next(iter(moved["weight_map"]))
    moved["weight_map"][key] = shard.name if moved["weight_map"][key] != shard.name else "x"
    index.write_text(json.dumps(moved))
    with pytest.raises(FileCheckError, match=f"placing {re.escape(key)} in"):
        read_generator_file(folder)


# -- what the sniff recognises, and that it is cheap -------------------------------------------------------------


def test_sniff_names_common_impostors(tmp_path: Path) -> None:
    cases = {"lfs.pt": (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 11\n", "Git LFS pointer"),
             "page.pt": (b"<!DOCTYPE html><html>404</html>", "HTML"),
             "x.pt": (b"\x1f\x8b\x08\x00" + bytes(40), "gzip"),
             "img.pt": (b"\x89PNG\r\n\x1a\n" + bytes(40), "PNG image")}
    for name, (data, want) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FileCheckError, match=want):
            check_weights(tmp_path / name, fc.GENERATOR)
    with zipfile.ZipFile(tmp_path / "plain.pt", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(FileCheckError, match="a zip archive but not a torch one"):
        check_weights(tmp_path / "plain.pt", fc.GENERATOR)
    assert sniff(make_generator(tmp_path)[0])[0] == fc.ZIP
    assert sniff(make_vae_legacy(tmp_path)[0])[0] == fc.LEGACY
    assert sniff(make_latents(tmp_path)[0])[0] == fc.SAFETENSORS
    with pytest.raises(FileCheckError, match="a folder, not a file"):
        check_weights(tmp_path, fc.NVFP4_GENERATOR)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        check_weights(tmp_path / "nowhere.pt", fc.GENERATOR)


def test_safetensors_header_damage(tmp_path: Path) -> None:
    path, lat = make_latents(tmp_path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["latents"]["data_offsets"][1] += 4  # the range no longer fits the dtype and shape
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    with pytest.raises(FileCheckError, match=r"tensor 'latents' F32 \[1, 16, 2, 3, 4\] has byte range"):
        read_latents(path)
    path.write_bytes(data + b"\0" * 8)
    with pytest.raises(FileCheckError, match="8 bytes after the last tensor's data"):
        read_latents(path)
    path.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(FileCheckError, match="header is not valid JSON"):
        read_latents(path)


def test_the_sniff_reads_headers_not_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 GiB safetensors file (sparse: no disk used) is checked from its header alone."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [2**31], "data_offsets": [0, 2**31]}}).encode()
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 2**31)
    read = []
    real_open = open

    class Counting(io.BufferedReader):
        def read(self, n: int = -1) -> bytes:  # type: ignore[override]
            b = super().read(n)
            read.append(len(b))
            return b

    monkeypatch.setattr(fc, "open", lambda p, mode="r": Counting(real_open(p, "rb", buffering=0)), raising=False)
    assert check_weights(path, fc.LATENTS) == fc.SAFETENSORS
    assert 0 < sum(read) < 4096


# -- images -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", [*DAMAGES, "safetensors"])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_damaged_images_are_named_before_any_work(suffix: str, how: str, tmp_path: Path) -> None:
    path, _ = make_image(tmp_path, suffix)
    if how == "safetensors":
        save_file({"x": torch.ones(2)}, str(path))
    else:
        damage(path, how)
    req = VideoRequest(model="tiny", frames=TINY.chunk_frames, image=path, random_weights=True)
    with pytest.raises((FileCheckError, FileNotFoundError)) as err:
        validate(req)
    msg = str(err.value)
    assert msg.startswith(f"--image {path}") and "image" in msg
    want = {"empty": "an empty file", "random": "not an image", "safetensors": r"not an image \(safetensors file\)",
            "cut_1": "not an image"}.get(how, "truncated")
    assert re.search(want, msg), msg


def test_valid_images_pass_and_read_back(tmp_path: Path) -> None:
    path, px = make_image(tmp_path)
    check_image(path)
    validate(VideoRequest(model="tiny", frames=TINY.chunk_frames, image=path, random_weights=True))
    assert torch.equal(torch.from_numpy(np.array(Image.open(path))), px)  # PNG: lossless, bit-identical
    jpg, _ = make_image(tmp_path, ".jpg")
    with open(jpg, "ab") as f:
        f.write(b"trailer")  # bytes after the end marker (some cameras write them) are still a readable JPEG
    check_image(jpg, "--validation-image")


# -- the command line ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--checkpoint", "--lora", "--image"])
def test_generate_with_a_damaged_file_exits_2_cleanly(flag: str, tmp_path: Path, capsys) -> None:
    make = {"--checkpoint": make_generator, "--lora": make_lora, "--image": make_image}[flag]
    path, _ = make(tmp_path)
    damaged = path.with_name("damaged" + path.suffix)
    path.rename(damaged)
    damage(damaged, "cut_50%")
    out = tmp_path / "out"
    code = main(["generate", "--model", "tiny", flag, str(damaged), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("longlive generate: error: ") and str(damaged) in err and "truncated" in err, err
    assert not out.exists()


def test_decode_with_damaged_latents_exits_2_cleanly(tmp_path: Path, capsys) -> None:
    path, _ = make_latents(tmp_path)
    damage(path, "cut_90%")
    out = tmp_path / "frames"
    assert main(["decode", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "truncated safetensors file" in err and str(path) in err and "Traceback" not in err
    assert not out.exists()
