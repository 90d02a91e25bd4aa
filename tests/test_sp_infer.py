"""Sequence-parallel inference on 2 gloo ranks (CPU) against the single-process run; the compressed exchange."""

import json
import subprocess
import sys

import pytest
import torch

from longlive.model.presets import get_preset
from longlive.parallel.groups import check_sp


def _run_sp(tmp_path, *args) -> list[dict]:
    out = tmp_path / "sp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "longlive.bench.sp", "--preset", "tiny", "--chunks", "6", "--steps", "2", "--dtype", "fp32",
           "--reference", "single", "--out", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())["rows"]


def test_sp2_equals_single_process_and_compression_shrinks_kv_bytes(tmp_path):
    rows = {r["exchange"]: r for r in _run_sp(tmp_path, "--exchange", "none", "fp8", "nvfp4")}
    assert rows["none"]["sp"] == 2
    assert rows["none"]["latent_rel_err_vs_ref"] < 1e-5  # fp32: the same computation, re-associated
    assert 0 < rows["fp8"]["latent_rel_err_vs_ref"] < 1e-2
    assert rows["fp8"]["latent_rel_err_vs_ref"] < rows["nvfp4"]["latent_rel_err_vs_ref"] < 3e-2
    k = {ex: r["bytes_by_kind_rank0"]["k"] for ex, r in rows.items()}
    head_dim = get_preset("tiny").head_dim
    assert k["none"] / k["fp8"] == pytest.approx(4 * head_dim / (head_dim + 4))  # fp32 → E4M3 + fp32 row scale
    assert k["none"] / k["nvfp4"] > 6.5  # fp32 → 4.5 bits per element (+ one tensor scale per destination)
    assert rows["nvfp4"]["bytes_by_kind_rank0"]["q"] == rows["none"]["bytes_by_kind_rank0"]["q"]  # only K/V squeezed


def test_compiled_sp2_equals_single_process(tmp_path):
    """The compiled blocks with the SP attention island (all-to-alls in eager) stream the single-process latents."""
    (row,) = _run_sp(tmp_path, "--exchange", "none", "--compile", "default")
    assert row["sp"] == 2 and row["compile"] == "default" and row["compile_s"] > 0
    assert row["latent_rel_err_vs_ref"] < 1e-5


def test_sp2_with_quantised_kv_cache(tmp_path):
    rows = _run_sp(tmp_path, "--exchange", "none", "--kv-quant", "nvfp4", "--profile", str(tmp_path / "prof.txt"))
    # per-rank head groups get their own NVFP4 tensor scales, so not bit-equal, but close
    assert rows[0]["latent_rel_err_vs_ref"] < 1e-2
    assert rows[0]["kv_cache_gb_per_rank"] > 0
    # the profile runs on both ranks (its collectives) and rank 0 writes it
    assert (tmp_path / "prof.txt").read_text().startswith("tiny sp=2 rank 0, none Linears, exchange none, 2-step")


def test_sp_errors_before_work():
    with pytest.raises(ValueError, match="sp=3 does not divide the tiny preset's 4 attention heads"):
        check_sp(get_preset("tiny"), 3)
    with pytest.raises(ValueError, match="sp=4 does not divide the tiny preset's 2 latent frames per chunk"):
        check_sp(get_preset("tiny"), 4)
    check_sp(get_preset("wan2.2-ti2v-5b"), 8)


def test_world_size_must_be_sp_times_dp(monkeypatch):
    from longlive.parallel.groups import init_parallel

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="world size 3 is not sp × dp for sp=2"):
        init_parallel(2, device="cpu")


def test_ulysses_all_to_alls_are_inverse_and_differentiable(tmp_path):
    script = tmp_path / "a2a.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from longlive.parallel.ulysses import all_to_all_4d, heads_to_seq, seq_to_heads\n"
        "dist.init_process_group('gloo')\n"
        "r = dist.get_rank(); torch.manual_seed(0)\n"
        "full = torch.randn(1, 8, 4, 3, dtype=torch.float64)\n"
        "x = full[:, 4 * r : 4 * r + 4].clone().requires_grad_(True)\n"
        "y = seq_to_heads(x, None)\n"
        "assert torch.equal(y, full[:, :, 2 * r : 2 * r + 2]), 'seq->heads gives the full sequence on local heads'\n"
        "assert torch.equal(heads_to_seq(y, None), x)\n"
        "z = all_to_all_4d(x, None, to_heads=True)\n"
        "(z * torch.arange(z.numel(), dtype=z.dtype).view_as(z)).sum().backward()\n"
        "w = torch.zeros_like(full); w[:, :, 2 * r : 2 * r + 2] = torch.arange(z.numel(), dtype=z.dtype).view_as(z)\n"
        "parts = [torch.zeros_like(w) for _ in range(2)]; dist.all_gather(parts, w)\n"
        "g = parts[0] + parts[1]\n"
        "assert torch.equal(x.grad, g[:, 4 * r : 4 * r + 4]), 'backward is the inverse all-to-all'\n"
        "print('ok', r)\n"
        "dist.barrier(); dist.destroy_process_group()  # without this, gloo's threads can abort at exit\n")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.__version__  # ran under torchrun with gloo
