"""One validator: the run spec's rules (`longlive.experiments.rules`) give each bad value one message naming the field,
the value, what is allowed and the fix, and `generate`, `sweep`, `fidelity` and `train` refuse (or accept) the same
values with the same words."""

from __future__ import annotations

import dataclasses

import pytest

from longlive.cli import main
from longlive.experiments import rules
from longlive.experiments.spec import DEFAULT_PROMPTS, RunSpec, check_spec, from_config
from longlive.infer.video import DECODE_CHOICES, VideoRequest, validate
from longlive.model.presets import get_preset
from longlive.names import DECODE, EXCHANGE
from longlive.runner.matrix import expand
from longlive.text.prompts import SCENE_CUT_PREFIX
from longlive.workloads import get_workload

TINY = get_preset("tiny")
CF = TINY.chunk_frames
NO_SWEEP = ["matrices=[]"]


@pytest.fixture(autouse=True)
def _isolated_weights(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    monkeypatch.setenv("LONGLIVE_WEIGHTS", str(tmp_path / "weights"))


@pytest.mark.parametrize("call, message", [
    (lambda: rules.check_steps(0, cli=True), "--steps 0 must be ≥ 1 (denoising steps per chunk; any N ≥ 1 works)"),
    (lambda: rules.check_steps(-2), "steps=-2 must be ≥ 1"),
    (lambda: rules.check_seed(2**64, cli=True), "--seed 18446744073709551616 is outside the valid seed range "
                                                "0..2**63-1"),
    (lambda: rules.check_seed(-1), "seed=-1 is outside the valid seed range 0..2**63-1"),
    (lambda: rules.check_frames(0, TINY, cli=True), "--frames 0 must be ≥ 1 chunk: the tiny chunk is 2 latent frames"),
    (lambda: rules.check_frames(-2, TINY), "frames=-2 must be ≥ 1 chunk"),
    (lambda: rules.check_frames(5, TINY, cli=True), "--frames 5 is not a multiple of the tiny chunk of 2 latent "
                                                    "frames: give --frames 4 or 6"),
    (lambda: rules.check_sp(0, TINY, cli=True), "--sp 0 must be ≥ 1"),
    (lambda: rules.check_sp(3, TINY), "sp=3 does not divide the tiny preset's 4 attention heads: give sp one of 1, 2"),
    (lambda: rules.check_exchange("fp8", EXCHANGE, 1, cli=True), "--exchange fp8 compresses the sequence-parallel "
                                                                 "all-to-alls, which --sp 1 does not have: it needs "
                                                                 "--sp ≥ 2"),
    (lambda: rules.check_exchange("int8", EXCHANGE, 2), "exchange='int8' is not one of none, fp8, nvfp4"),
    (lambda: rules.check_decode("device", DECODE, 1, "cpu", None, cli=True), "decode=device puts the VAE on a second "
                                                                             "device, but no --vae-device is given"),
    (lambda: rules.check_decode("device", DECODE, 1, "cuda:0", "cuda:0"), "vae_device='cuda:0' is the generator's "
                                                                          "own device"),
    (lambda: rules.check_decode("tiles", DECODE, 1, "cpu", None), "decode=tiles splits each chunk's decode over the "
                                                                  "SP ranks: it needs sp >= 2"),
    (lambda: rules.check_decode("teleport", DECODE, 1, "cpu", None, cli=True), "unknown --decode 'teleport'"),
    (lambda: rules.check_device_string("device", "gpu0", cli=True), "--device gpu0 is not a device: give cpu, cuda or "
                                                                    "cuda:N"),
    (lambda: rules.check_device_string("hardware.device", "meta"), "hardware.device='meta' is not a device"),
    (lambda: rules.check_device_present("device", "cuda:99", cli=True), "device cuda:99 is not available on this "
                                                                        "machine"),
    (lambda: rules.check_prompts(["a", "b"], None, 1, SCENE_CUT_PREFIX, CF, default=True),
     "2 prompts need at least 2 chunks (one each); the video has 1 (the default 2-prompt plan: the config's "
     "prompts): give frames ≥ 4 (2 × the chunk of 2), or give one prompt"),
    (lambda: rules.check_prompts(["a", "  "], None, 4, SCENE_CUT_PREFIX, cli=True), "--prompt #2 '  ' is blank"),
    (lambda: rules.check_prompts([""], None, 4, SCENE_CUT_PREFIX), "prompts[0]='' is blank"),
    (lambda: rules.check_prompts(["a", SCENE_CUT_PREFIX], None, 4, SCENE_CUT_PREFIX),
     "prompts[1]='The scene transitions. ' is only the scene-cut prefix"),
    (lambda: rules.check_prompts(["a", "b"], [0], 4, SCENE_CUT_PREFIX), "switch chunks [0] must increase strictly and "
                                                                        "lie in 1..3"),
    (lambda: rules.check_prompts(["a", "b"], [1, 2], 4, SCENE_CUT_PREFIX), "2 prompts need 1 switch chunks, got 2"),
    (lambda: rules.check_size(TINY, 100, None, cli=True), "--height 100 is not a positive multiple of 32"),
    (lambda: rules.check_geometry(TINY, 0, None, None), "window_frames=0 must be ≥ 1"),
    (lambda: rules.check_finite("timestep_shift", float("inf")), "timestep_shift=inf must be a finite number > 0"),
    (lambda: rules.check_release_options(lora_mode="runtime", lora=None, fuse_qkv=False, ema=False,
                                         random_weights=False, act_rule=None, kv_rule="mse", linear_quant="none",
                                         act_quant=True, kv_quant="none", quant_exclude=[]),
     "lora_mode='runtime' keeps a LoRA file's adapter separate: give the file with lora"),
])
def test_each_rule_names_field_value_range_and_fix(call, message):
    with pytest.raises(ValueError) as exc:
        call()
    assert message in str(exc.value)


@pytest.mark.parametrize("request_kw, spec_kw, words", [
    ({"steps": 0}, {"steps": 0}, "0 must be ≥ 1 (denoising steps per chunk"),
    ({"frames": 0}, {"frames": 0}, "0 must be ≥ 1 chunk: the tiny chunk is 2 latent frames"),
    ({"frames": 3}, {"frames": 3}, "3 is not a multiple of the tiny chunk of 2 latent frames"),
    ({"sp": 0}, {"sp": 0}, "0 must be ≥ 1"),
    ({"sp": 3}, {"sp": 3}, "sp=3 does not divide the tiny preset's 4 attention heads"),
    ({"exchange": "fp8"}, {"exchange": "fp8"}, "compresses the sequence-parallel all-to-alls, which"),
    ({"seed": 2**63}, {"seed": 2**63}, "is outside the valid seed range 0..2**63-1"),
    ({"seed": -1}, {"seed": -1}, "is outside the valid seed range 0..2**63-1"),
    ({"prompts": ["a", " "]}, {"prompts": ["a", " "]}, "' ' is blank: prompts must not be empty"),
    ({"prompts": ["a", "b"], "frames": CF}, {"prompts": ["a", "b"], "frames": CF}, "2 prompts need at least 2 chunks"),
    ({"timestep_shift": 0.0}, {"timestep_shift": 0.0}, "must be a finite number > 0"),
    ({"guidance_scale": -1.0}, {"guidance_scale": -1.0}, "must be a finite number ≥ 0"),
    ({"height": 100}, {"height": 100}, "100 is not a positive multiple of 32"),
    ({"sink_frames": 1}, {"sink_frames": 1}, "sink_frames=1 is not a multiple of chunk_frames=2"),
    ({"kv_rule": "static_6"}, {"kv_rule": "static_6"}, "is the NVFP4 KV-cache rule: it needs"),
])
def test_generate_and_the_run_spec_refuse_the_same_values_in_the_same_words(request_kw, spec_kw, words):
    """generate's request and a sweep's spec share the rule functions: the same value fails with the same message
    (a generate flag `--steps 0` where a config key `steps=0` is named)."""
    with pytest.raises(ValueError) as by_generate:
        validate(VideoRequest(model="tiny", **{"frames": 4 * CF, "random_weights": True, **request_kw}), launched=False)
    with pytest.raises(ValueError) as by_spec:
        check_spec(RunSpec(**spec_kw))
    assert words in str(by_generate.value) and words in str(by_spec.value)


@pytest.mark.parametrize("override, words", [
    ("steps=0", "steps=0 must be ≥ 1"),
    ("frames=3", "frames=3 is not a multiple of the tiny chunk of 2"),
    ("sp=3", "sp=3 does not divide the tiny preset's 4 attention heads"),
    ("frames=2", "(the default 2-prompt plan: the config's prompts): give frames ≥ 4"),
    ("exchange=fp8", "exchange='fp8' compresses the sequence-parallel all-to-alls"),
    ("seed=-4", "seed=-4 is outside the valid seed range"),
])
def test_sweep_expansion_refuses_what_generate_refuses(override, words):
    with pytest.raises(ValueError, match="1 of 1 cells are invalid; nothing ran") as exc:
        expand(None, [*NO_SWEEP, override])
    assert words in str(exc.value)


def test_valid_edge_values_pass_everywhere():
    """Any step count ≥ 1 (not only the published ones), a video of one chunk with one prompt, the largest seed, an
    FP8 exchange with SP: generate's checks and the sweep's accept them alike."""
    for kw in ({"steps": 7}, {"frames": CF, "prompts": ["one"]}, {"seed": rules.SEED_MAX}, {"guidance_scale": 0.0},
               {"sp": 2, "exchange": "fp8"}):
        validate(VideoRequest(model="tiny", **{"frames": 4 * CF, "random_weights": True, **kw}), launched=False)
        check_spec(RunSpec(**kw))
    cells = expand(None, [*NO_SWEEP, "steps=7", f"frames={CF}", "prompts=[one]", f"seed={rules.SEED_MAX}"])
    assert [(c.config["steps"], c.config["frames"], c.config["seed"]) for c in cells] == [(7, CF, rules.SEED_MAX)]


def test_decode_device_without_a_second_device_is_an_error_in_generate_and_a_skip_in_a_sweep():
    with pytest.raises(ValueError, match="no --vae-device is given"):
        validate(VideoRequest(model="tiny", frames=4 * CF, decode="device", random_weights=True))
    with pytest.raises(ValueError, match="device cuda:1 is not available on this machine|generator"):
        validate(VideoRequest(model="tiny", frames=4 * CF, decode="device", vae_device="cuda:1", device="cuda:1",
                              random_weights=True))
    cell = expand(None, [*NO_SWEEP, "decode=device"])[0]  # decode/device.yaml names cuda:1: valid, a skip here
    assert "decode=device" in get_workload("infer").check(from_config(cell.config))
    with pytest.raises(ValueError, match="decode=device puts the VAE on a second device"):
        expand(None, [*NO_SWEEP, "decode=device", "decode.vae_device=null"])


def test_the_decode_names_are_the_registered_modes():
    assert set(DECODE) == set(DECODE_CHOICES)


def test_the_default_prompts_are_the_run_specs():
    """config.yaml takes the prompts from the schema (one spelling): a default cell has the two-shot plan."""
    cell = expand(None, NO_SWEEP)[0]
    assert cell.config["prompts"] == list(DEFAULT_PROMPTS) == RunSpec().prompts
    assert DEFAULT_PROMPTS[1].startswith(SCENE_CUT_PREFIX)


@pytest.mark.parametrize("generate, sweep, fidelity, train, words", [
    (["--frames", "3"], ["frames=3"], ["--frames", "3"], ["--frames", "3"], "3 is not a multiple of the tiny chunk"),
    (["--frames", "0"], ["frames=0"], ["--frames", "0"], ["--frames", "0"], "0 must be ≥ 1 chunk"),
    (["--seed", "-1"], ["seed=-1"], ["--frames", "4", "--seed", "-1"], ["--seed", "-1"],
     "-1 is outside the valid seed range"),
    (["--sp", "0"], ["sp=0"], None, ["--sp", "0"], "0 must be ≥ 1"),  # fidelity has no --sp
])
def test_generate_sweep_fidelity_and_train_agree(capsys, tmp_path, generate, sweep, fidelity, train, words):
    commands = [
        ["generate", "--model", "tiny", *generate, "--random-weights", "--out", str(tmp_path / "g")],
        ["sweep", *NO_SWEEP, *sweep, "--results", str(tmp_path / "s")],
        ["train", "--model", "tiny", "--train-steps", "1", *train, "--out", str(tmp_path / "t")],
    ]
    if fidelity is not None:
        commands.append(["fidelity", "--model", "tiny", *fidelity, "--precision", "nvfp4", "--random-weights",
                         "--out", str(tmp_path / "f")])
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]  # no output folder was made


def test_a_sweep_lists_every_invalid_cell_with_its_axes(capsys, tmp_path):
    code = main(["sweep", *NO_SWEEP, "steps=0,2", "sp=1,3", "--results", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "3 of 4 cells are invalid; nothing ran" in err
    lines = [ln for ln in err.splitlines() if ln.startswith("  ")]
    assert len(lines) == 3 and all("model=tiny" in ln and "hardware=cpu" in ln for ln in lines)
    assert sum("steps=0" in ln for ln in lines) == 2 and sum("sp=3 " in ln for ln in lines) == 2
    assert not (tmp_path / "r").exists()


def test_training_cells_get_the_training_rules_at_expansion():
    """A workload's own refusal (here SP training's frames per rank) stops the sweep too, before any cell runs."""
    with pytest.raises(ValueError, match="1 of 1 cells are invalid") as exc:
        expand(None, [*NO_SWEEP, "workload=train", "sp=2", "frames=6"])
    assert "multiple of sp·chunk = 4" in str(exc.value)


def test_fidelity_checks_both_runs_before_either_starts(capsys, tmp_path):
    argv = ["fidelity", "--model", "tiny", "--frames", "4", "--precision", "nvfp4", "--kv-quant", "int4",
            "--random-weights", "--out", str(tmp_path / "f")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--precision / --kv-quant nvfp4 / int4: unknown --kv-quant 'int4'; choose one of none, fp8, nvfp4" in err
    assert not (tmp_path / "f").exists()


def test_request_replace_keeps_the_rules():
    """A request changed in code (the runner's, fidelity's) is checked by the same rules as the CLI's."""
    base = VideoRequest(model="tiny", frames=4 * CF, random_weights=True)
    validate(base)
    with pytest.raises(ValueError, match="--steps 0 must be ≥ 1"):
        validate(dataclasses.replace(base, steps=0))
