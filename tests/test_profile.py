"""longlive.measure.profile: device time by kind of kernel, device-side events only, and a profile written for a
real call (CPU)."""

from types import SimpleNamespace

import torch
from torch.autograd import DeviceType

from longlive.measure.profile import device_kernels, device_time_breakdown, profile_call


def test_device_time_breakdown_sorts_kernels_by_kind_and_skips_cpu_ops():
    events = [("aten::linear", 0.0), ("nvjet_tst_128x256_64x4", 400.0), ("triton_poi_fused_add_mul_0", 100.0),
              ("triton_red_fused__scaled_mm__to_copy_abs_amax_1", 20.0), ("triton_tem_fused_mm_2", 100.0),
              ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 700.0), ("void at::native::copy_kernel", 30.0),
              ("void at::native::vectorized_elementwise_kernel", 10.0), ("aten::mm", 0.0)]
    assert device_time_breakdown(events) == {"attention": 700.0, "GEMM": 500.0, "fused pointwise (inductor)": 120.0,
                                             "copies": 30.0, "other": 10.0}


def test_device_kernels_keeps_device_events_only():
    ev = [SimpleNamespace(key="aten::addmm", self_device_time_total=5.0, device_type=DeviceType.CPU),
          SimpleNamespace(key="nvjet_x", self_device_time_total=5.0, device_type=DeviceType.CUDA),
          SimpleNamespace(key="nccl:all_to_all", self_device_time_total=2.0, device_type=DeviceType.CUDA,
                          is_user_annotation=True),
          SimpleNamespace(key="ncclDevKernel_SendRecv", self_device_time_total=2.0, device_type=DeviceType.CUDA,
                          is_user_annotation=False)]
    assert device_kernels(ev) == [("nvjet_x", 5.0), ("ncclDevKernel_SendRecv", 2.0)]


def test_profile_call_writes_its_table_and_only_the_recording_rank_profiles(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return torch.randn(64, 64) @ torch.randn(64, 64)

    shares = profile_call(work, tmp_path / "p.txt", "a title")
    text = (tmp_path / "p.txt").read_text()
    assert text.startswith("a title\ndevice time by kind of kernel") and "aten::mm" in text
    assert isinstance(shares, dict)  # no device kernels on a CPU-only machine: an empty breakdown, not an error
    assert profile_call(work, tmp_path / "q.txt", "t", record=False) is None and not (tmp_path / "q.txt").exists()
    assert len(calls) == 2  # the non-recording rank still runs the work (its collectives)
