"""Bad inputs to `generate`, `fidelity`, `sweep` and `train`, each refused before any work: exit code 2, one clean
message (no traceback) naming the field, and nothing left behind (no output folder, no results rows). Model
building, generation, sweep cells and training data are patched to fail, so a case that got past the checks fails
loudly instead of running. Valid edge inputs (any step count, one chunk with one prompt, the largest seed) run."""

from __future__ import annotations

import json

import pytest

import longlive.cli as cli
import longlive.infer.assemble as assemble
import longlive.infer.fidelity as fidelity
import longlive.model.dit as dit
import longlive.runner.executor as executor
import longlive.train.trainer as trainer
from longlive.experiments.rules import SEED_MAX
from longlive.quant.kv import DEFAULT_KV_RULE
from longlive.quant.nvfp4 import RULES as NVFP4_RULES

OTHER_KV_RULE = next(r for r in NVFP4_RULES if r != DEFAULT_KV_RULE)

GENERATE = ["generate", "--model", "tiny", "--out", "{out}"]
FIDELITY = ["fidelity", "--model", "tiny", "--precision", "nvfp4", "--random-weights", "--out", "{out}"]


def sweep(*overrides: str) -> list[str]:
    """A sweep's argv: Hydra overrides before the options (argparse takes positionals first)."""
    return ["sweep", "matrices=[]", *overrides, "--results", "{out}", "--no-progress"]


TRAIN = ["train", "--model", "tiny", "--train-steps", "1", "--out", "{out}"]

CASES = {  # kind: (argv, fragments the message must hold)
    "generate steps 0": ([*GENERATE, "--steps", "0"], ["--steps 0 must be ≥ 1"]),
    "generate steps negative": ([*GENERATE, "--steps", "-3"], ["--steps -3 must be ≥ 1"]),
    "generate frames 0": ([*GENERATE, "--frames", "0"], ["--frames 0 must be ≥ 1 chunk", "tiny chunk is 2"]),
    "generate frames negative": ([*GENERATE, "--frames", "-2"], ["--frames -2 must be ≥ 1 chunk"]),
    "generate frames not whole chunks": ([*GENERATE, "--frames", "5"], ["--frames 5 is not a multiple",
                                                                        "give --frames 4 or 6"]),
    "generate two prompts in one chunk": ([*GENERATE, "--frames", "2", "--prompt", "a", "--prompt", "b"],
                                          ["2 prompts need at least 2 chunks", "--frames ≥ 4", "one --prompt"]),
    "generate empty prompt": ([*GENERATE, "--prompt", ""], ["--prompt #1", "is blank"]),
    "generate blank prompt": ([*GENERATE, "--prompt", "a", "--prompt", "   "], ["--prompt #2", "is blank"]),
    "generate prefix-only prompt": ([*GENERATE, "--prompt", "a", "--prompt", "The scene transitions. "],
                                    ["--prompt #2", "only the scene-cut prefix"]),
    "generate switch at chunk 0": ([*GENERATE, "--frames", "8", "--prompt", "a", "--prompt", "b", "--switch-at", "0"],
                                   ["switch chunks [0] must increase strictly", "--switch-at"]),
    "generate switch count": ([*GENERATE, "--frames", "8", "--prompt", "a", "--prompt", "b", "--switch-at", "1", "2"],
                              ["2 prompts need 1 switch chunks, got 2"]),
    "generate sp 0": ([*GENERATE, "--sp", "0"], ["--sp 0 must be ≥ 1"]),
    "generate sp negative": ([*GENERATE, "--sp", "-1"], ["--sp -1 must be ≥ 1"]),
    "generate sp not dividing heads": ([*GENERATE, "--sp", "3"], ["sp=3 does not divide", "give --sp one of 1, 2"]),
    "generate exchange without sp": ([*GENERATE, "--exchange", "fp8"], ["--exchange fp8", "needs --sp ≥ 2"]),
    "generate decode device without a second device": ([*GENERATE, "--decode", "device"],
                                                       ["decode=device", "no --vae-device is given"]),
    "generate decode tiles without sp": ([*GENERATE, "--decode", "tiles"], ["decode=tiles", "sp >= 2"]),
    "generate vae device string": ([*GENERATE, "--decode", "device", "--vae-device", "nonsense"],
                                   ["--vae-device nonsense is not a device"]),
    "generate seed too large": ([*GENERATE, "--seed", str(2**64)], ["--seed 18446744073709551616",
                                                                    "0..2**63-1"]),
    "generate seed negative": ([*GENERATE, "--seed", "-1"], ["--seed -1", "0..2**63-1"]),
    "generate device string": ([*GENERATE, "--device", "gpu0"], ["--device gpu0 is not a device", "cuda:N"]),
    "generate device absent": ([*GENERATE, "--device", "cuda:99"], ["--device cuda:99", "not available"]),
    "generate image missing": ([*GENERATE, "--image", "{tmp}/no.png"], ["--image", "no.png",
                                                                        "the image file does not exist"]),
    "generate lora missing": ([*GENERATE, "--lora", "{tmp}/no.safetensors"], ["--lora", "no.safetensors"]),
    "generate timestep shift 0": ([*GENERATE, "--timestep-shift", "0"],
                                  ["--timestep-shift 0.0 must be a finite number > 0"]),
    "generate guidance negative": ([*GENERATE, "--guidance-scale", "-1"], ["--guidance-scale -1.0 must be"]),
    "generate guidance nan": ([*GENERATE, "--guidance-scale", "nan"], ["--guidance-scale nan must be"]),
    "generate window 0": ([*GENERATE, "--window-frames", "0"], ["--window-frames 0 must be ≥ 1"]),
    "generate sink not whole chunks": ([*GENERATE, "--sink-frames", "1"], ["--sink-frames 1",
                                                                           "is not a multiple of chunk_frames=2"]),
    "generate height": ([*GENERATE, "--height", "100"], ["--height 100 is not a positive multiple of 32"]),
    "generate runtime lora without a file": ([*GENERATE, "--lora-mode", "runtime"], ["--lora-mode runtime",
                                                                                     "with --lora"]),
    "generate kv rule without nvfp4 cache": ([*GENERATE, "--kv-rule", OTHER_KV_RULE],
                                             [f"--kv-rule {OTHER_KV_RULE}", "--kv-quant nvfp4"]),
    "generate ema with random weights": ([*GENERATE, "--ema", "--random-weights"], ["--ema", "--random-weights"]),
    "generate blank scene-cut prefix": ([*GENERATE, "--scene-cut-prefix", "  "], ["scene_cut_prefix",
                                                                                  "must contain text"]),
    "generate relative rope with sp": ([*GENERATE, "--relative-rope", "--sp", "2"], ["--relative-rope", "--sp 1"]),
    "generate quant exclude without quantised linears": ([*GENERATE, "--quant-exclude", "blocks.0.ffn.0"],
                                                         ["--quant-exclude", "--precision"]),
    "generate dp 0": ([*GENERATE, "--dp", "0"], ["--dp 0"]),
    "fidelity kv quant": ([*FIDELITY, "--frames", "4", "--kv-quant", "int4"], ["unknown --kv-quant 'int4'"]),
    "fidelity reference kv quant": ([*FIDELITY, "--frames", "4", "--ref-kv-quant", "q"],
                                    ["--ref-precision / --ref-kv-quant", "unknown --kv-quant 'q'"]),
    "fidelity frames": ([*FIDELITY, "--frames", "3"], ["--frames 3 is not a multiple"]),
    "fidelity steps": ([*FIDELITY, "--frames", "4", "--steps", "0"], ["--steps 0 must be ≥ 1"]),
    "fidelity precision": ([*FIDELITY, "--frames", "4", "--precision", "fp99"], ["unknown precision 'fp99'"]),
    "fidelity device": ([*FIDELITY, "--frames", "4", "--device", "gpu0"], ["--device gpu0 is not a device"]),
    "fidelity seed": ([*FIDELITY, "--frames", "4", "--seed", str(SEED_MAX + 1)], [f"--seed {SEED_MAX + 1}"]),
    "fidelity blank prompt": ([*FIDELITY, "--frames", "4", "--prompt", " "], ["--prompt #1", "is blank"]),
    "sweep steps 0": (sweep("steps=0"), ["steps=0 must be ≥ 1"]),
    "sweep on slurm steps 0": (sweep("steps=0", "hydra.launcher.cpus_per_task=1") + ["--launcher", "slurm"],
                               ["steps=0 must be ≥ 1"]),
    "sweep frames not whole chunks": (sweep("frames=3"), ["frames=3 is not a multiple of the tiny chunk"]),
    "sweep sp not dividing heads": (sweep("sp=3"), ["sp=3 does not divide", "give sp one of 1, 2"]),
    "sweep default plan in one chunk": (sweep("frames=2"), ["the default 2-prompt plan", "frames ≥ 4",
                                                               "one prompt"]),
    "sweep exchange without sp": (sweep("exchange=fp8"), ["exchange='fp8'", "sp ≥ 2"]),
    "sweep seed negative": (sweep("seed=-1"), ["seed=-1 is outside the valid seed range"]),
    "sweep blank prompt": (sweep("prompts=[' ']"), ["prompts[0]=' ' is blank"]),
    "sweep decode device without vae device": (sweep("decode=device", "decode.vae_device=null"),
                                               ["decode=device", "vae_device"]),
    "sweep hardware device": (sweep("hardware.device=gpu0"), ["hardware.device='gpu0' is not one of cpu, cuda"]),
    "sweep train frames per sp rank": (sweep("workload=train", "sp=2", "frames=6"), ["sp·chunk = 4"]),
    "sweep compile mode": (sweep("compile=fast"), ["compile='fast' is not one of"]),
    "sweep unknown key": (sweep("stepz=3"), ["Key 'stepz' not in 'RunSpec'"]),
    "sweep timestep shift 0": (sweep("timestep_shift=0"), ["timestep_shift=0", "must be a finite number > 0"]),
    "train sp 0": ([*TRAIN, "--sp", "0"], ["--sp 0 must be ≥ 1"]),
    "train frames not whole chunks": ([*TRAIN, "--frames", "3"], ["--frames 3 is not a multiple"]),
    "train frames 0": ([*TRAIN, "--frames", "0"], ["--frames 0 must be ≥ 1 chunk"]),
    "train seed negative": ([*TRAIN, "--seed", "-5"], ["--seed -5", "0..2**63-1"]),
    "train device string": ([*TRAIN, "--device", "gpu0"], ["--device gpu0 is not a device"]),
    "train steps negative": ([*TRAIN, "--train-steps", "-1"], ["--train-steps -1 must be ≥ 0"]),
    "train precision": ([*TRAIN, "--precision", "fp99"], ["unknown training recipe 'fp99'"]),
    "train frames per sp rank": ([*TRAIN, "--sp", "2", "--frames", "2"], ["sp × chunk = 4"]),
    "train model": ([*TRAIN, "--model", "wan3"], ["unknown preset 'wan3'"]),
}


@pytest.fixture(autouse=True)
def _isolated_weights(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    monkeypatch.setenv("LONGLIVE_WEIGHTS", str(tmp_path / "weights"))


@pytest.fixture
def no_work(monkeypatch):
    """Every way to start work fails the test: validation must come first."""
    def boom(*a, **k):
        raise AssertionError("work started before the input was checked")

    for module, name in ((dit, "build_model"), (assemble, "build_model"), (assemble, "build"), (cli, "make_video"),
                         (fidelity, "make_video"), (executor, "run_cell"), (trainer, "build_data"),
                         (cli.subprocess, "call")):
        monkeypatch.setattr(module, name, boom)


def test_the_suite_covers_enough_kinds():
    commands = {argv[0] for argv, _ in CASES.values()}
    assert len(CASES) >= 35 and commands == {"generate", "fidelity", "sweep", "train"}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_is_refused_cleanly_before_any_work(kind, capsys, tmp_path, no_work):
    argv, fragments = CASES[kind]
    out = tmp_path / "out"
    argv = [a.replace("{out}", str(out)).replace("{tmp}", str(tmp_path)) for a in argv]
    code = cli.main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (kind, err)
    assert err.startswith(f"longlive {argv[0]}: error: ") and "Traceback" not in err, err
    if argv[0] != "sweep":  # a sweep lists each invalid cell on its own line
        assert err.strip().count("\n") == 0, err
    for fragment in fragments:
        assert fragment in err, (kind, fragment, err)
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    assert not (out / "results.jsonl").exists() and not (out / "result.json").exists()


def test_valid_edge_inputs_run(capsys, tmp_path):
    """Seven steps, a video of one chunk with one prompt and the largest seed: accepted by generate and a sweep."""
    out = tmp_path / "edge"
    code = cli.main(["generate", "--model", "tiny", "--frames", "2", "--steps", "7", "--prompt", "one",
                     "--seed", str(SEED_MAX), "--decode", "none", "--random-weights", "--no-progress",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    row = json.loads((out / "result.json").read_text())["rows"][0]
    assert (row["steps"], row["frames"], row["seed"]) == (7, 2, SEED_MAX)
    code = cli.main(["sweep", "matrices=[]", "steps=7", "frames=2", "prompts=[one]", f"seed={SEED_MAX}", "--list",
                     "--results", str(tmp_path / "r")])
    listed = capsys.readouterr().out.splitlines()
    assert code == 0 and len(listed) == 1 and "steps=7" in listed[0]


@pytest.mark.parametrize("kind", ["file", "missing"])
def test_a_bad_weights_folder_stops_a_sweep_before_any_cell(kind, capsys, tmp_path, monkeypatch, no_work):
    bad = tmp_path / "weights.txt"
    if kind == "file":
        bad.write_text("not a folder")
    monkeypatch.setenv("LONGLIVE_WEIGHTS", str(bad))
    out = tmp_path / "out"
    argv = [a.replace("{out}", str(out)) for a in sweep("steps=4")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "LONGLIVE_WEIGHTS=" in err and ("is a file" if kind == "file" else "does not exist") in err, err
    assert "Traceback" not in err and not out.exists()
