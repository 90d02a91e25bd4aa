"""`longlive generate` over many videos and its weight / size / quantisation-rule options, and `longlive decode`:
prompt files and the release's caption layout, samples, a failing video keeps the finished ones and a re-run skips
them, data parallel over videos, resolution override, runtime LoRA, EMA weights, NVFP4 module filter and rules,
decoding saved latents (tiny preset, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from safetensors.torch import load_file

import longlive.cli as cli
import longlive.infer.batch as batch
from longlive.cli import main
from longlive.eval.fidelity import latent_rel_err
from longlive.experiments.spec import RunSpec, check_spec, from_config
from longlive.infer.batch import PromptEntry, dp_share, read_caption_dir, read_prompt_file, shot_chunks, video_items
from longlive.infer.latents import decode_latents, read_latents, write_video
from longlive.infer.training_weights import load_training_weights
from longlive.infer.video import VideoRequest, validate
from longlive.model.checkpoint import save_generator
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.quant.linear import LinearQuantConfig
from longlive.quant.recipes import attach_lora, quantize_model, select_linears
from longlive.report.load import load_results
from longlive.runner.matrix import expand
from longlive.text.prompts import SCENE_CUT_PREFIX as CUT
from longlive.train.checkpoint import capture_rng, save_checkpoint
from longlive.train.lora import save_lora
from longlive.workloads.infer import video_request

CFG = get_preset("tiny")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _shipped_weights(monkeypatch):
    """The shipped tiny weights (no seeded stand-ins), so a video depends on its seed and prompts only."""
    monkeypatch.delenv("LONGLIVE_WEIGHTS", raising=False)


def _gen(capsys, tmp_path, *args):
    code = main(["generate", "--model", "tiny", "--steps", "2", "--no-progress", "--cache-dir",
                 str(tmp_path / "emb"), *args])
    return code, capsys.readouterr().err


def _latents(folder: Path) -> torch.Tensor:
    return load_file(str(folder / "latents.safetensors"))["latents"]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def test_prompt_file_gives_one_folder_and_one_row_per_video_and_samples_take_seed_plus_k(capsys, tmp_path):
    (tmp_path / "p.txt").write_text("a red ball\n\n  \na blue box  \n")
    out = tmp_path / "many"
    code, err = _gen(capsys, tmp_path, "--frames", "2", "--decode", "none", "--prompt-file",
                     str(tmp_path / "p.txt"), "--samples", "2", "--seed", "3", "--out", str(out))
    assert code == 0, err
    rows = {r["cell_id"]: r for r in _rows(out)}
    assert sorted(rows) == ["0000-0", "0000-1", "0001-0", "0001-1"]
    assert [rows[n]["seed"] for n in sorted(rows)] == [3, 4, 3, 4]
    assert rows["0001-1"]["metrics_extra"]["prompts"] == ["a blue box"]  # right-stripped, blank lines skipped
    assert all(r["status"] == "ok" and (out / r["artifacts"]["latents"]).is_file() for r in rows.values())
    assert (out / "0001-0" / "prompts.txt").read_text() == "[0] a blue box\n"
    assert rows["0000-0"]["load_s"] is not None and rows["0001-1"]["load_s"] is None  # assembled once
    assert len(load_results([out])) == 4  # `longlive report` reads the folder
    # build once, run many: a later video (another prompt, another seed) equals its own single generation
    code, err = _gen(capsys, tmp_path, "--frames", "2", "--decode", "none", "--prompt", "a blue box", "--seed", "4",
                     "--out", str(tmp_path / "single"))
    assert code == 0, err
    assert torch.equal(_latents(out / "0001-1"), _latents(tmp_path / "single"))
    assert not torch.equal(_latents(out / "0001-1"), _latents(out / "0001-0"))


def test_caption_layout_is_read_as_the_release_reads_it(tmp_path):
    def sample(name: str, captions: dict[str, str], durations: str | None = None) -> None:
        d = tmp_path / "data" / "caption" / name
        d.mkdir(parents=True)
        for stem, text in captions.items():
            (d / f"{stem}.json").write_text(json.dumps({"caption": text}))
        (d / "global.json").write_text(json.dumps({"caption": "never a shot"}))
        if durations is not None:
            (d / "shot_durations.txt").write_text(durations)

    sample("b", {"10": "ten", "2": "two", "1": "one"}, "1, 2\n9")  # numeric order; the 3rd shot takes the rest
    sample("a", {"0": "zero", "intro": "first"})                    # non-numeric stems first; spread evenly
    sample("c", {"0": "x", "1": "y"}, "0 5")                       # a zero-length first shot
    entries = read_caption_dir(tmp_path / "data", num_chunks=5, chunks_per_shot=0, prefix=CUT)
    assert [e.source for e in entries] == ["a", "b", "c"]
    assert (entries[0].prompts, entries[0].switch_at) == (("first", CUT + "zero"), (3,))
    assert (entries[1].prompts, entries[1].switch_at) == (("one", CUT + "two", CUT + "ten"), (1, 3))
    assert (entries[2].prompts, entries[2].switch_at) == ((CUT + "y",), ())
    fixed = read_caption_dir(tmp_path / "data", num_chunks=5, chunks_per_shot=1, prefix=CUT)
    assert fixed[0].switch_at == (1,)  # chunks_per_shot where no shot_durations.txt; the last shot takes the rest
    assert shot_chunks(3, 2, None, 0) == [1, 1] and shot_chunks(2, 4, [9, 9], 0) == [4]
    (tmp_path / "data" / "caption" / "c" / "shot_durations.txt").write_text("two")
    with pytest.raises(ValueError, match="shot_durations.txt: expected whole numbers"):
        read_caption_dir(tmp_path / "data", 5, 0, CUT)
    (tmp_path / "data" / "caption" / "c" / "shot_durations.txt").unlink()
    (tmp_path / "data" / "caption" / "c" / "1.json").write_text("{}")
    with pytest.raises(ValueError, match="1.json: no non-empty 'caption'"):
        read_caption_dir(tmp_path / "data", 5, 0, CUT)
    items = video_items([PromptEntry(7, "x", ("p",), None)], samples=3, seed=10)
    assert [(i.name, i.seed) for i in items] == [("0007-0", 10), ("0007-1", 11), ("0007-2", 12)]


def test_a_failing_video_keeps_the_finished_ones_and_a_rerun_skips_them(capsys, tmp_path, monkeypatch):
    (tmp_path / "caption" / "s0").mkdir(parents=True)
    (tmp_path / "caption" / "s0" / "0.json").write_text(json.dumps({"caption": "a ball"}))
    (tmp_path / "caption" / "s1").mkdir()
    for i, c in enumerate(("a box", "a star")):
        (tmp_path / "caption" / "s1" / f"{i}.json").write_text(json.dumps({"caption": c}))
    out, ran = tmp_path / "out", []
    real_run = batch.run

    def run(p, folder):
        ran.append(folder.name)
        if folder.name == "0001-0" and len(ran) < 3:
            raise RuntimeError("boom")
        return real_run(p, folder)

    monkeypatch.setattr(batch, "run", run)
    args = ["--frames", "4", "--decode", "none", "--caption-dir", str(tmp_path), "--out", str(out)]
    code, err = _gen(capsys, tmp_path, *args)
    assert code == 1 and "video 0001-0 failed: RuntimeError: boom" in err
    rows = _rows(out)
    assert [(r["cell_id"], r["status"]) for r in rows] == [("0000-0", "ok"), ("0001-0", "failed")]
    assert "boom" in rows[1]["reason"] and (out / "0000-0" / "latents.safetensors").is_file()
    first = (out / "0000-0" / "latents.safetensors").stat().st_mtime_ns
    code, err = _gen(capsys, tmp_path, *args)
    assert code == 0, err
    assert ran == ["0000-0", "0001-0", "0001-0"] and "1 of its 2 videos already done" in err
    assert (out / "0000-0" / "latents.safetensors").stat().st_mtime_ns == first
    assert (out / "0001-0" / "prompts.txt").read_text() == f"[0] a box\n[1] {CUT}a star\n"
    assert {r["cell_id"]: r["status"] for r in load_results([out]).to_dict("records")} == {"0000-0": "ok",
                                                                                         "0001-0": "ok"}


def test_resolution_override_changes_the_latent_shape_and_bad_sizes_fail_first(capsys, tmp_path):
    code, err = _gen(capsys, tmp_path, "--frames", "2", "--decode", "none", "--height", "64", "--width", "96",
                     "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert _latents(tmp_path / "r").shape == (1, CFG.out_channels, 2, 4, 6)
    row = json.loads((tmp_path / "r" / "result.json").read_text())["rows"][0]
    assert (row["height"], row["width"]) == (64, 96)
    code, err = _gen(capsys, tmp_path, "--frames", "2", "--height", "100", "--out", str(tmp_path / "bad"))
    assert code == 2 and "--height 100 is not a positive multiple of 32" in err and not (tmp_path / "bad").exists()


def test_runtime_lora_equals_the_merged_lora(capsys, tmp_path):
    base = save_generator(build_model(CFG, seed=5), tmp_path / "base.pt")
    g = torch.Generator().manual_seed(3)
    meta = build_model(CFG, device="meta", init=False)
    lora = {}
    for name in ("blocks.0.self_attn.q", "blocks.1.ffn.0", "blocks.1.cross_attn.o"):
        lin = meta.get_submodule(name)
        lora[f"{name}.lora_A.weight"] = torch.randn(4, lin.in_features, generator=g) * 0.3
        lora[f"{name}.lora_B.weight"] = torch.randn(lin.out_features, 4, generator=g) * 0.3
    save_lora(tmp_path / "l.pt", lora, lora_rank=4, alpha=8)
    common = ["--frames", "4", "--decode", "none", "--checkpoint", str(base)]
    for mode in ("merge", "runtime"):
        code, err = _gen(capsys, tmp_path, *common, "--lora", str(tmp_path / "l.pt"), "--lora-mode", mode,
                         "--out", str(tmp_path / mode))
        assert code == 0, err
    assert "kept at runtime on 3 Linears (scale 2)" in err
    code, err = _gen(capsys, tmp_path, *common, "--out", str(tmp_path / "none"))
    assert code == 0, err
    same = latent_rel_err(_latents(tmp_path / "merge"), _latents(tmp_path / "runtime"))
    moved = latent_rel_err(_latents(tmp_path / "merge"), _latents(tmp_path / "none"))
    assert same < 1e-4 and moved > 1e3 * same, (same, moved)
    code, err = _gen(capsys, tmp_path, *common, "--lora-mode", "runtime", "--out", str(tmp_path / "x"))
    assert code == 2 and "give the file with --lora" in err


def test_runtime_lora_runs_over_quantised_linears():
    model = build_model(CFG, seed=1)
    quantize_model(model, LinearQuantConfig(fmt="nvfp4", backend="emulated"))
    q = model.blocks[0].ffn[0]
    x = torch.randn(3, q.in_features)
    A, B = torch.randn(4, q.in_features), torch.randn(q.out_features, 4)
    assert attach_lora(model, {"blocks.0.ffn.0.lora_A.weight": A, "blocks.0.ffn.0.lora_B.weight": B}, 0.5) == [
        "blocks.0.ffn.0"]
    torch.testing.assert_close(model.blocks[0].ffn[0](x), q(x) + 0.5 * x @ A.T @ B.T)


def test_ema_weights_of_a_training_checkpoint_are_the_ema_ones(capsys, tmp_path):
    model = build_model(CFG, seed=2)
    g = torch.Generator().manual_seed(0)
    ema = {n: p.detach() + 0.05 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000007.pt",
                    {"step": 7, "model": model.state_dict(), "ema": ema, "optim": {}, "rng": capture_rng(),
                     "config": {}, "data": None, "world": 1})
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000007.pt"
    loaded = build_model(CFG, seed=9)
    load_training_weights(loaded, ckpt, ema=True)
    assert all(torch.equal(p, ema[n]) for n, p in loaded.named_parameters())
    load_training_weights(loaded, ckpt, ema=False)
    assert all(torch.equal(p, q) for p, q in zip(loaded.parameters(), model.parameters(), strict=True))
    with torch.no_grad():
        for n, p in loaded.named_parameters():
            p.copy_(ema[n])
    save_generator(loaded, tmp_path / "ema_as_generator.pt")
    common = ["--frames", "2", "--decode", "none"]
    code, err = _gen(capsys, tmp_path, *common, "--checkpoint", str(ckpt), "--ema", "--out", str(tmp_path / "ema"))
    assert code == 0 and "the EMA weights of step 7" in err, err
    code, err = _gen(capsys, tmp_path, *common, "--checkpoint", str(tmp_path / "ema_as_generator.pt"), "--out",
                     str(tmp_path / "ref"))
    assert code == 0, err
    assert torch.equal(_latents(tmp_path / "ema"), _latents(tmp_path / "ref"))
    assert json.loads((tmp_path / "ema" / "result.json").read_text())["rows"][0]["ema"] is True
    code, err = _gen(capsys, tmp_path, *common, "--checkpoint", str(tmp_path / "ema_as_generator.pt"), "--ema",
                     "--out", str(tmp_path / "no"))
    assert code == 2 and "holds no EMA weights" in err


def test_quant_module_filter_and_rules_reach_the_model_and_the_row(capsys, tmp_path):
    model = build_model(CFG, seed=0)
    every = select_linears(model, r"")
    blocks = select_linears(model)
    assert len(blocks) == 10 * CFG.num_layers and set(blocks) < set(every) and "head.head" in every
    assert select_linears(model, exclude=["blocks.0.ffn.0", r"re:cross_attn\.(q|k)$"]) == [
        n for n in blocks if n != "blocks.0.ffn.0" and not n.endswith(("cross_attn.q", "cross_attn.k"))]
    code, err = _gen(capsys, tmp_path, "--frames", "2", "--decode", "none", "--precision", "nvfp4",
                     "--quant-exclude", r"re:ffn\.\d$", "--act-rule", "mse", "--kv-quant", "nvfp4", "--kv-rule",
                     "static_6", "--out", str(tmp_path / "q"))
    assert code == 0, err
    assert f"PTQ: {len(blocks) - 2 * CFG.num_layers} block Linears -> nvfp4" in err
    row = json.loads((tmp_path / "q" / "result.json").read_text())["rows"][0]
    assert (row["act_rule"], row["kv_rule"], row["quant_exclude"]) == ("mse", "static_6", [r"re:ffn\.\d$"])
    code, err = _gen(capsys, tmp_path, "--frames", "2", "--kv-rule", "static_6", "--out", str(tmp_path / "b"))
    assert code == 2 and "needs --kv-quant nvfp4" in err
    code, err = _gen(capsys, tmp_path, "--frames", "2", "--quant-exclude", "re:(", "--precision", "nvfp4",
                     "--out", str(tmp_path / "b"))
    assert code == 2 and "not a regular expression" in err


def test_decode_command_equals_generates_decode(capsys, tmp_path):
    out = tmp_path / "g"
    code, err = _gen(capsys, tmp_path, "--frames", "4", "--decode", "batch", "--save-latents", "--out", str(out))
    assert code == 0, err
    assert main(["decode", str(out), "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "strip.png").read_bytes() == (out / "strip.png").read_bytes()
    assert (iio.imread(tmp_path / "d" / "video.mp4") == iio.imread(out / "video.mp4")).all()
    req = VideoRequest(model="tiny", frames=4, decode="streaming")
    validate(req)
    frames = decode_latents(read_latents(out), req)  # streaming equals batch, as generate's modes do
    assert frames.shape == (13, CFG.height, CFG.width, 3)
    write_video(frames, tmp_path / "api", CFG.fps)
    assert (tmp_path / "api" / "strip.png").read_bytes() == (out / "strip.png").read_bytes()
    assert main(["decode", str(out / "latents.safetensors"), "--out", str(tmp_path / "e"), "--decode",
                 "streaming"]) == 0
    assert (tmp_path / "e" / "strip.png").read_bytes() == (out / "strip.png").read_bytes()
    assert main(["decode", str(tmp_path / "nothing"), "--out", str(tmp_path / "f")]) == 2


def test_dp_launches_its_ranks_and_each_takes_every_nth_video(capsys, tmp_path, monkeypatch):
    (tmp_path / "p.txt").write_text("one\ntwo\nthree\n")
    launched = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: launched.append(cmd) or 0)
    args = ["--frames", "2", "--prompt-file", str(tmp_path / "p.txt"), "--dp", "2", "--out", str(tmp_path / "o")]
    code, err = _gen(capsys, tmp_path, *args)
    assert code == 0, err
    (cmd,) = launched
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert cmd[6:] == ["longlive.cli", "generate", "--model", "tiny", "--steps", "2", "--no-progress", "--cache-dir",
                       str(tmp_path / "emb"), *args]
    items = video_items(read_prompt_file(tmp_path / "p.txt"), samples=2, seed=0)
    shares = [[it.name for it in dp_share(items, r, 4)] for r in range(4)]
    assert shares == [["0000-0", "0002-0"], ["0000-1", "0002-1"], ["0001-0"], ["0001-1"]]
    code, err = _gen(capsys, tmp_path, *args[:-2], "--sp", "2", "--out", str(tmp_path / "sp"))
    assert code == 2 and "run without --sp" in err


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
def test_dp_two_ranks_cover_every_video_once(tmp_path):
    """Two gloo ranks under torchrun (as `--dp 2` launches them): every video once, each by its rank."""
    (tmp_path / "p.txt").write_text("one\ntwo\nthree\n")
    out = tmp_path / "dp"
    env = {k: v for k, v in os.environ.items() if k not in ("LONGLIVE_WEIGHTS", "WORLD_SIZE", "RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "longlive.cli",
           "generate", "--model", "tiny", "--frames", "2", "--steps", "2", "--decode", "none", "--device", "cpu",
           "--no-progress", "--cache-dir", str(tmp_path / "emb"), "--prompt-file", str(tmp_path / "p.txt"),
           "--dp", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out)
    assert sorted(r["cell_id"] for r in rows) == ["0000-0", "0001-0", "0002-0"]
    assert all(r["status"] == "ok" and r["dp"] == 2 for r in rows)
    assert [r["metrics_extra"]["prompts"] for r in sorted(rows, key=lambda r: r["cell_id"])] == [
        ["one"], ["two"], ["three"]]
    assert "rank 0: 2 videos ok" in proc.stdout and "rank 1: 1 videos ok" in proc.stdout


def test_a_sweep_cell_takes_the_options_under_the_same_names():
    fast = ["matrices=[]", "steps=2", "sp=1", "decode=streaming", "precision=nvfp4", "kv_quant=nvfp4"]
    over = ["height=64", "width=96", "lora_mode=merge", "ema=false", "kv_rule=static_6", "precision.act_rule=mse",
            "quant_exclude=[blocks.0.ffn.0]"]
    req = video_request(from_config(expand("smoke", [*fast, *over])[0].config))
    assert (req.height, req.width, req.lora_mode, req.ema, req.kv_rule, req.act_rule, req.quant_exclude) == (
        64, 96, "merge", False, "static_6", "mse", ["blocks.0.ffn.0"])
    assert video_request(RunSpec()).act_rule == "static_6"  # the default rule when the precision names none
    for field, bad in (("lora_mode", "fused"), ("kv_rule", "rms")):
        with pytest.raises(ValueError, match=f"{field}='{bad}' is not one of"):
            check_spec(RunSpec(**{field: bad}))
