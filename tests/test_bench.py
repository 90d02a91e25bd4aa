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
