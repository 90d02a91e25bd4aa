"""longlive.bench.perf refuses bad configs before touching a GPU; its fidelity measure."""

import pytest
import torch


def test_perf_bench_checks_its_configs_before_any_work():
    from longlive.bench.perf import main, parse_config, rel_err

    assert parse_config("fp8:nvfp4:2") == ("fp8", "nvfp4", 2)
    for bad in ("fp8:nvfp4", "int8:none:4", "bf16:fp4:4", "bf16:none:two"):
        with pytest.raises(ValueError, match="precision:kv:steps"):
            parse_config(bad)
    with pytest.raises(ValueError, match="precision:kv:steps"):
        main(["--configs", "bf16:none:4", "fp16:none:4", "--out", "/nonexistent"])
    ref = torch.ones(2, 3)
    assert rel_err(ref * 1.5, ref) == pytest.approx(0.5) and rel_err(ref, None) is None
    assert rel_err(torch.ones(3, 2), ref) is None  # a different length is no comparison


def test_device_time_breakdown_sorts_kernels_by_kind_and_skips_cpu_ops():
    from longlive.bench.chunks import device_time_breakdown

    events = [("aten::linear", 0.0), ("nvjet_tst_128x256_64x4", 400.0), ("triton_poi_fused_add_mul_0", 100.0),
              ("triton_red_fused__scaled_mm__to_copy_abs_amax_1", 20.0), ("triton_tem_fused_mm_2", 100.0),
              ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 700.0), ("void at::native::copy_kernel", 30.0),
              ("void at::native::vectorized_elementwise_kernel", 10.0), ("aten::mm", 0.0)]
    assert device_time_breakdown(events) == {"attention": 700.0, "GEMM": 500.0, "fused pointwise (inductor)": 120.0,
                                             "copies": 30.0, "other": 10.0}


def test_device_kernels_keeps_device_events_only():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from longlive.bench.chunks import device_kernels

    ev = [SimpleNamespace(key="aten::addmm", self_device_time_total=5.0, device_type=DeviceType.CPU),
          SimpleNamespace(key="nvjet_x", self_device_time_total=5.0, device_type=DeviceType.CUDA),
          SimpleNamespace(key="nccl:all_to_all", self_device_time_total=2.0, device_type=DeviceType.CUDA,
                          is_user_annotation=True),
          SimpleNamespace(key="ncclDevKernel_SendRecv", self_device_time_total=2.0, device_type=DeviceType.CUDA,
                          is_user_annotation=False)]
    assert device_kernels(ev) == [("nvjet_x", 5.0), ("ncclDevKernel_SendRecv", 2.0)]
