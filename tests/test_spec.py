"""The typed run spec: composition checks types and keys, expansion checks value sets for every cell before any
runs, and workloads receive a RunSpec whose names are the overrides and the result columns."""

import pandas as pd
import pytest

from longlive.experiments.spec import RunSpec, check_spec, from_config
from longlive.model.presets import get_preset
from longlive.report.load import load_results, upgrade_row
from longlive.runner.executor import run_sweep
from longlive.runner.matrix import expand
from longlive.runner.schema import AXES, empty_row
from longlive.runner.store import ResultsStore

FAST = ["matrices=[]", "steps=2", "sp=1", "decode=streaming", "kv_quant=none", "precision=fp32"]


@pytest.mark.parametrize("override, message", [
    ("steps=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("stepz=3", "Key 'stepz' not in 'RunSpec'"),
    ("kv_quant=int4", "Could not find 'kv_quant/int4'"),
    ("random_weights=maybe", "Value 'maybe' is not a valid bool"),
])
def test_composition_rejects_wrong_keys_types_and_options(override, message):
    with pytest.raises(ValueError, match="cannot compose") as exc:
        expand("smoke", [override])
    assert message in str(exc.value)


def test_expansion_names_every_invalid_cell_before_any_runs(tmp_path):
    with pytest.raises(ValueError) as exc:
        run_sweep("smoke", [*FAST, "compile=fast", "steps=2,4"], tmp_path / "r", progress=False)
    text = str(exc.value)
    assert text.startswith("2 of 2 cells are invalid; nothing ran")
    assert text.count("compile='fast' is not one of none, default, max-autotune-no-cudagraphs") == 2
    assert not (tmp_path / "r" / "results.jsonl").exists()
    with pytest.raises(ValueError, match="frames=0 must be ≥ 1"):
        expand("smoke", [*FAST, "frames=0"])
    with pytest.raises(ValueError, match="precision.linear_quant='int8' is not one of none, fp8, nvfp4"):
        expand("smoke", [*FAST, "precision.linear_quant=int8"])


def test_one_name_per_concept_config_key_is_override_is_column():
    cell = expand("smoke", [*FAST, "kv_quant=nvfp4", "exchange=none", "compile=none"])[0]
    spec = from_config(cell.config)
    assert isinstance(spec, RunSpec) and spec.kv_quant.name == "nvfp4" and spec.hardware.name == "cpu"
    assert set(cell.axes) == set(AXES)
    for axis in ("kv_quant", "hardware", "exchange", "steps", "sp", "compile", "model", "precision", "decode"):
        assert axis in cell.config, axis  # the override's key is a config key
    assert cell.axes["kv_quant"] == "nvfp4" and cell.axes["hardware"] == "cpu" and cell.axes["compile"] == "none"
    assert spec.precision.linear_quant == "none" and spec.precision.dtype == "fp32"
    nv = from_config(expand("smoke", [*FAST[:-1], "precision=nvfp4"])[0].config).precision
    assert (nv.linear_quant, nv.linear_backend, nv.weight_rule) == ("nvfp4", "emulated", "mse")


def test_check_spec_covers_the_value_sets():
    check_spec(RunSpec())
    for field, bad in (("exchange", "int8"), ("train_layout", "diagonal"), ("dmd_quantised", "critic")):
        spec = RunSpec(**{field: bad})
        with pytest.raises(ValueError, match=f"{field}='{bad}' is not one of"):
            check_spec(spec)


def test_rows_written_before_the_renames_still_load(tmp_path):
    old = empty_row("c0", "smoke", "infer", {"model": "tiny", "precision": "fp32"}, 16, 0)
    old.pop("hardware")
    old.update(status="ok", gpu="cpu", dmd_lora_rank=8, denoise_fps=3.0)
    assert upgrade_row(dict(old))["hardware"] == "cpu"
    ResultsStore(tmp_path).append(old)
    df = load_results([tmp_path])
    assert df.loc[0, "hardware"] == "cpu" and df.loc[0, "lora_rank"] == 8 and df.loc[0, "gpu_name"] == "cpu"


def test_vae_decode_workload_runs_on_the_tiny_preset(tmp_path):
    counts = run_sweep(None, ["workload=vae_decode", "decode_chunks=3", "precision=fp32"], tmp_path, progress=False)
    assert counts["ok"] == 1, counts
    row = load_results([tmp_path]).iloc[0]
    assert row["workload"] == "vae_decode" and row["decode_fps"] > 0 and row["decode_ms_median"] > 0
    assert pd.isna(row["steps"]) and pd.isna(row["kv_quant"])  # not inference axes here
    extra = row["metrics_extra"]
    t = get_preset("tiny").chunk_frames
    assert len(extra["decode_ms"]) == 3 and extra["frames"] == [1 + 4 * (t - 1), 4 * t, 4 * t]
    assert "caches carried" in row["timing_definition"]["decode_fps"]
