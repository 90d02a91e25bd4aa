"""The experiment matrix runner: expansion, the append-only store, skip/failure rows, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longlive.runner.cell import classify_failure
from longlive.runner.executor import run_sweep
from longlive.runner.matrix import expand, make_cell, reference_cell
from longlive.runner.schema import AXES, METRICS
from longlive.runner.store import ResultsStore

FAST = ["frames=4", "quality.metrics=[temporal_flickering]"]


def test_smoke_matrix_covers_every_declared_axis_value():
    all_infer = [c for c in expand("smoke") if c.config["workload"]["name"] == "infer"]
    cells = [c for c in all_infer if c.config["frames"] == 16]  # the main matrix; the long cells are below
    long = [c for c in all_infer if c.config["frames"] >= 60]
    assert len(long) == 2 and {c.axes["kv_quant"] for c in long} == {"none", "nvfp4"}  # one per KV format
    combos = {(c.axes["steps"], c.axes["decode"], c.axes["precision"], c.axes["kv_quant"], c.axes["sp"]) for c in cells}
    assert len(cells) == len(combos) == 2 * 2 * 4 * 2 * 2
    assert {c.axes["precision"] for c in cells} == {"fp32", "bf16", "fp8-emulated", "nvfp4"}
    assert {c.axes["kv_quant"] for c in cells} == {"none", "nvfp4"} and {c.axes["sp"] for c in cells} == {1, 2}
    assert {c.axes["model"] for c in cells} == {"tiny"} and {c.axes["hardware"] for c in cells} == {"cpu"}
    assert len({c.cell_id for c in cells}) == len(cells)
    assert all(set(c.axes) == set(AXES) for c in cells)


def test_command_line_sweep_replaces_the_presets_axis_and_ids_are_stable():
    cells = expand("smoke", ["steps=3", "decode=batch", "sp=1", "kv_quant=none", "precision=fp32,bf16", "matrices=[]"])
    assert [(c.axes["steps"], c.axes["precision"]) for c in cells] == [(3, "fp32"), (3, "bf16")]
    again = expand("smoke", ["steps=3", "decode=batch", "sp=1", "kv_quant=none", "precision=fp32,bf16", "matrices=[]"])
    assert [c.cell_id for c in cells] == [c.cell_id for c in again]
    other = expand("smoke", ["steps=3", "decode=batch", "sp=1", "kv_quant=none", "precision=fp32", "seed=1",
                             "matrices=[]"])
    assert other[0].cell_id != cells[0].cell_id  # any config change is a different cell


def test_smoke_training_sub_matrices_are_a_union_not_a_product():
    cells = expand("smoke")
    train = [c for c in cells if c.config["workload"]["name"] == "train"]
    dmd = [c for c in cells if c.config["workload"]["name"] == "dmd"]
    # 64 main cells, 2 long-video cells, 3 interactivity cells (one per decode mode), then the training cells
    interactive = [c for c in cells if c.config["frames"] == 12 and c.config["workload"]["name"] == "infer"]
    assert sorted(c.axes["decode"] for c in interactive) == ["async", "batch", "streaming"]
    assert len(cells) == 64 + 2 + 3 + len(train) + len(dmd) and len({c.cell_id for c in cells}) == len(cells)
    assert {c.config["repeats"] for c in cells[:64]} == {3} and {c.config["repeats"] for c in train + dmd} == {1}
    assert {(c.axes["precision"], c.axes["error_recycling"]) for c in train if c.axes["sp"] == 1} == {
        (p, e) for p in ("fp32", "bf16", "fp8-emulated", "nvfp4") for e in (False, True)}
    assert {(c.axes["precision"], c.axes["train_layout"]) for c in train if c.axes["sp"] == 2} == {
        (p, t) for p in ("fp32", "bf16") for t in ("traditional", "balanced")}
    assert {c.axes["dmd_quantised"] for c in dmd} == {"none", "generator", "generator+real", "generator+real+critic"}
    for c in train + dmd:  # inference-only axes are empty in training rows, and the other way round
        assert c.axes["decode"] is c.axes["steps"] is c.axes["kv_quant"] is c.axes["exchange"] is None
        assert reference_cell(c) is None
    assert all(c.axes["train_layout"] is c.axes["dmd_quantised"] is None for c in cells[:64])
    assert all(c.axes["train_layout"] is None and c.axes["dp"] is None for c in dmd)
    # a command-line sweep of an inference axis does not multiply the training cells
    more = expand("smoke", ["steps=4,3,2"])
    assert len([c for c in more if c.config["workload"]["name"] != "infer"]) == len(train) + len(dmd)


def test_train_and_dmd_cells_run_skip_and_fail_with_reasons(tmp_path):
    fast = ["frames=4", "train_iters=1", "dmd_iters=1", "lora_rank=4"]
    run_sweep(None, ["workload=train", *fast, "precision=fp32,fp8,fp8-te"], tmp_path, progress=False)
    run_sweep(None, ["workload=train", *fast, "sp=2", "train_layout=balanced", "error_recycling=false,true"],
              tmp_path, progress=False)
    run_sweep(None, ["workload=dmd", "frames=2", *fast[1:], "dmd_quantised=none,generator+real+critic",
                     "precision=fp32,nvfp4"], tmp_path, progress=False)
    rows = _rows(tmp_path)
    by = {(r["workload"], r["precision"], r["sp"], r["error_recycling"], r["dmd_quantised"]): r for r in rows}
    ok = by[("train", "fp32", 1, False, None)]
    assert ok["status"] == "ok" and ok["iter_s"] > 0 and ok["tokens_per_s"] > 0
    assert ok["loss_first"] > 0 and ok["decode"] is None and ok["train_layout"] == "none" and ok["dp"] == 1
    assert "iter_s" in ok["timing_definition"] and ok["metrics_extra"]["losses"]
    assert by[("train", "fp8", 1, False, None)]["status"] == "skipped"
    assert "compute capability" in by[("train", "fp8", 1, False, None)]["reason"]
    assert "no training recipe" in by[("train", "fp8-te", 1, False, None)]["reason"]
    sp2 = by[("train", "fp32", 2, False, None)]
    assert sp2["status"] == "ok" and sp2["train_layout"] == "balanced" and sp2["metrics_extra"]["sp"] == 2
    assert sp2["iter_s"] > 0 and sp2["manifest"]["config"]["frames"] == 4  # Table 1's rung, FSDP2 + SP over gloo
    er2 = by[("train", "fp32", 2, True, None)]  # error recycling under SP (issue 18)
    assert er2["status"] == "ok" and er2["metrics_extra"]["sp"] == 2, er2["reason"]
    for rung in ("none", "generator+real+critic"):
        r = by[("dmd", "fp32", 1, None, rung)]
        assert r["status"] == "ok" and r["iter_s"] > 0 and r["critic_loss"] is not None, r["reason"]
    assert r["metrics_extra"]["frozen_formats"] == {"generator": "nvfp4", "teacher": "nvfp4", "critic": "nvfp4"}
    assert "dmd_quantised axis" in by[("dmd", "nvfp4", 1, None, "none")]["reason"]


def test_every_experiment_preset_expands():
    import math

    from omegaconf import OmegaConf

    from longlive.runner.matrix import EXPERIMENTS_DIR

    for name in ("smoke", "table1_training", "table2_dmd_memory", "table4_quality", "sp_scaling", "perf_ladder",
                 "vae_decode", "lowprec", "quant_kernels", "tiny_default"):
        cells = expand(name)
        assert cells and all(c.experiment == name for c in cells)
    sp = {(c.axes["sp"], c.axes["exchange"], c.axes["steps"], c.axes["decode"]) for c in expand("sp_scaling")}
    assert len(sp) == 19 and (4, "nvfp4", 2, "none") in sp and (4, "none", 4, "tiles") in sp
    for name in ("table3_inference", "full_matrix"):  # large: size from the declared axes
        params = OmegaConf.load(EXPERIMENTS_DIR / "experiment" / f"{name}.yaml").hydra.sweeper.params
        first = [f"{k}={str(v).split(',')[0]}" for k, v in params.items()]
        cell = make_cell([f"+experiment={name}", *first])
        assert cell.experiment == name and cell.axes["model"] == "wan2.2-ti2v-5b"
        assert math.prod(len(str(v).split(",")) for v in params.values()) >= 96


def test_bad_experiment_or_axis_value_fails_before_work():
    with pytest.raises(ValueError, match="unknown experiment 'nope'; known: attn_lowp, attn_lowp_tiny, "
                                         "attn_lowp_tiny_emulated, foundation_5b"):
        expand("nope")
    with pytest.raises(ValueError, match="Could not find 'precision/fp99'"):
        expand("smoke", ["precision=fp99"])


def test_reference_cell_differs_only_in_reference_axes():
    cell = make_cell(["+experiment=smoke", "steps=2", "decode=async", "precision=bf16", "sp=1"])
    ref = reference_cell(cell)
    assert ref.axes == {**cell.axes, "steps": 4, "decode": "streaming", "precision": "fp32"}


def test_store_last_row_wins_and_torn_line_is_dropped(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"cell_id": "a", "status": "failed"})
    store.append({"cell_id": "b", "status": "ok"})
    store.append({"cell_id": "a", "status": "ok"})
    with store.jsonl.open("a") as f:
        f.write('{"cell_id": "c", "sta')  # a writer killed mid-line
    assert {k: v["status"] for k, v in store.latest().items()} == {"a": "ok", "b": "ok"}
    import pandas as pd

    df = pd.read_parquet(store.write_parquet())
    assert sorted(df.cell_id) == ["a", "b"]


def test_append_after_a_tear_at_every_byte_offset(tmp_path):
    """A row torn at any byte (a crash mid-write), then a fresh append: the fresh row and every earlier row read
    back, the torn line alone is skipped, a re-run reuses the fresh row, and the report loads the store."""
    from longlive.report.load import load_results
    from longlive.runner.cell import build_row

    spec = {"cell_id": "torn", "config": {"workload": {"name": "infer"}, "frames": 8, "seed": 0},
            "axes": {"steps": 4}}
    real = build_row(spec, "ok", None, {"denoise_fps": 12.5}, "2026-12-07T00:00:00+00:00", 0.0)
    line = (json.dumps(real, default=str, separators=(",", ":")) + "\n").encode()
    first = {"cell_id": "first", "status": "ok"}
    fresh = {**real, "cell_id": "fresh", "denoise_fps": 20.0}
    for cut in range(len(line) + 1):
        store = ResultsStore(tmp_path / str(cut))
        store.append(first)
        with store.jsonl.open("ab") as f:
            f.write(line[:cut])
        store.append(fresh)
        whole = cut >= len(line) - 1  # all of the JSON arrived (with or without its newline)
        rows = store.rows()
        assert [r["cell_id"] for r in rows] == ["first", *(["torn"] if whole else []), "fresh"], cut
        assert rows[-1] == json.loads(json.dumps(fresh, default=str))
        assert store.latest()["fresh"]["denoise_fps"] == 20.0
        if cut in (0, 1, len(line) // 2, len(line) - 2, len(line)):
            df = load_results([store.root])
            assert set(df.cell_id) == {"first", "fresh", *(["torn"] if whole else [])}


def test_classify_failure_reasons():
    assert classify_failure("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB").startswith("OOM")
    missing = classify_failure("ModuleNotFoundError: No module named 'vbench'")
    assert missing == "missing extra: No module named 'vbench'"
    assert classify_failure("Traceback ...\nValueError: bad thing\n") == "ValueError: bad thing"


def _rows(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]


def test_invalid_values_stop_the_sweep_and_unrunnable_cells_are_skips(tmp_path):
    """Invalid values fail on every machine: the sweep stops before any cell, naming each. A valid cell this machine
    cannot run (no H200 here) is an explained skip row, and the sweep goes on."""
    with pytest.raises(ValueError, match="4 of 4 cells are invalid; nothing ran") as exc:
        run_sweep(None, ["sp=1,3", "frames=5", "hardware=cpu,h200"], tmp_path, progress=False)
    assert str(exc.value).count("frames=5 is not a multiple of the tiny chunk") == 4
    assert not (tmp_path / "results.jsonl").exists()
    counts = run_sweep(None, [*FAST, "steps=1", "hardware=h200"], tmp_path, progress=False)
    rows = _rows(tmp_path)
    assert counts == {"ok": 0, "failed": 0, "skipped": 1, "reused": 0, "failed_earlier": 0} and len(rows) == 1
    assert rows[0]["status"] == "skipped" and "needs a CUDA GPU" in rows[0]["reason"]
    assert all(set(METRICS) <= set(r) for r in rows)  # every row has every column


def test_finished_cells_are_reused_and_force_redoes_them(tmp_path):
    args = [*FAST, "steps=2", "decode=batch,streaming"]
    first = run_sweep(None, args, tmp_path, progress=False)
    assert first["ok"] == 2
    rows = _rows(tmp_path)
    assert all(r["status"] == "ok" and r["denoise_fps"] > 0 and r["manifest"]["git_commit"] for r in rows)
    assert all(r["timing_definition"]["denoise_fps"] and r["mfu"] > 0 for r in rows)
    assert all((tmp_path / r["artifacts"]["video"]).exists() for r in rows)
    second = run_sweep(None, args, tmp_path, progress=False)
    assert second == {"ok": 0, "failed": 0, "skipped": 0, "reused": 2, "failed_earlier": 0}
    assert len(_rows(tmp_path)) == 2
    third = run_sweep(None, [*FAST, "steps=2", "decode=batch"], tmp_path, force=True, progress=False)
    assert third["ok"] == 1 and len(_rows(tmp_path)) == 3


def test_a_cell_killed_by_a_signal_says_so_and_a_rerun_counts_it(tmp_path, monkeypatch, capsys):
    from longlive import cli
    from longlive.runner import executor

    die = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    monkeypatch.setattr(executor, "cell_command", lambda cell, spec, row: die)
    counts = run_sweep(None, ["frames=4", "steps=2,4"], tmp_path, progress=False)
    rows = _rows(tmp_path)
    assert counts["failed"] == 2 and all(r["reason"] == "killed by SIGTERM (signal 15)" for r in rows)
    assert executor.signal_reason(1, "...\n  exitcode  : -9 (pid: 123)\n") == (
        "killed by SIGKILL (signal 9) (the host's out-of-memory killer sends SIGKILL)")  # a rank, under torchrun
    assert executor.signal_reason(1, "ValueError: x") is None
    assert cli.main(["sweep", "frames=4", "steps=2,4", "--results", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "0 ok, 0 failed, 0 skipped, 2 already done" in out
    assert "2 failed earlier, not retried: --retry-failed redoes them" in out


def test_killed_sweep_resumes_without_redoing_finished_cells(tmp_path):
    results = tmp_path / "res"
    cmd = [sys.executable, "-m", "longlive.cli", "sweep", *FAST, "steps=4,3,2", "decode=batch",
           "--results", str(results), "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (results / "results.jsonl").exists():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running cell, mid-matrix
    proc.wait()
    before = _rows(results)
    assert 1 <= len(before) < 3
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = _rows(results)
    assert after[: len(before)] == before
    ids = [r["cell_id"] for r in after]
    assert len(ids) == len(set(ids)) == 3  # nothing redone, nothing lost
    assert {r["steps"] for r in after} == {4, 3, 2} and all(r["status"] == "ok" for r in after)


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from longlive.runner.matrix import EXPERIMENTS_DIR

    with initialize_config_dir(config_dir=str(EXPERIMENTS_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=sp_scaling", "hydra/launcher=slurm", "sp=4"],
                      return_hydra_config=True)
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.gpus_per_node == 4


def test_sp8_cells_are_explained_skips_without_8_gpus(tmp_path):
    counts = run_sweep("sp_scaling", ["sp=8", "precision=bf16", "exchange=none", "steps=4", "decode=streaming"],
                       tmp_path, progress=False)
    rows = _rows(tmp_path)  # the command line overrides the preset's sub-matrices too: every cell is sp = 8
    assert counts["skipped"] == len(rows) >= 1 and counts["ok"] == counts["failed"] == 0
    for row in rows:
        assert row["sp"] == 8 and ("needs a CUDA GPU" in row["reason"] or "needs 8 GPUs" in row["reason"])


def test_a_reference_outside_the_matrix_runs_first_when_asked():
    """perf_ladder compares every cell with the FP32 eager run of its step count, which its matrix does not hold."""
    from longlive.runner.executor import order_cells

    cells = expand("perf_ladder", ["model=tiny", "hardware=cpu"])
    ordered = order_cells(cells)
    assert len(cells) == 4 and len(ordered) == 6
    refs, rest = ordered[:2], ordered[2:]
    assert [(c.axes["precision"], c.axes["compile"], c.axes["steps"]) for c in refs] == [("fp32", "none", 4),
                                                                                         ("fp32", "none", 2)]
    assert {c.cell_id for c in rest} == {c.cell_id for c in cells}
    plain = expand(None, ["steps=2,4"])  # the default reference (steps=4) is in this matrix: nothing is added
    assert len(order_cells(plain)) == 2 and order_cells(plain)[0].axes["steps"] == 4
