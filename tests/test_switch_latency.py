"""Prompt-switch latency (issue 22, item 4): which chunks are switches, when each is submitted (the chunk boundary) and
when its first frame lands on the host, per decode mode; the row's median and per-switch list; None without a switch
or without a decoder."""

from __future__ import annotations

import json
import math
import statistics
import time
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

import longlive.infer.decode as decode
from longlive.cli import main
from longlive.infer.assemble import SWITCH_LATENCY_DEFINITION, make_video, switch_columns
from longlive.infer.decode import make_decoder, switch_latencies
from longlive.infer.pipeline import GenerationSpec, chunk_texts, generate, prompt_switches
from longlive.infer.video import VideoRequest
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.runner.schema import LIST_METRICS, METRICS, TIMED_METRICS
from longlive.text.prompts import SCENE_CUT_PREFIX

CUT = SCENE_CUT_PREFIX
CFG = get_preset("tiny")
PROMPTS = ["A red circle bounces on a grey background.", "A blue square bounces on a grey background.",
           CUT + "A green triangle bounces on a grey background."]


class FakeClock:
    """time.perf_counter stand-in: every reading advances one second, so each stamp says which call took it."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


class StubVAE:
    """The decoder-facing surface of a VAE (device, decode, streaming_decoder): 1 + 4(t-1) grey frames, then 4t."""

    device = torch.device("cpu")
    dtype = torch.float32

    def decode(self, z: Tensor) -> Tensor:
        return torch.zeros(z.shape[0], 3, 1 + 4 * (z.shape[2] - 1), 8, 8)

    def streaming_decoder(self) -> SimpleNamespace:
        first = [True]

        def dec(z: Tensor) -> Tensor:
            n = 4 * z.shape[2] - (3 if first[0] else 0)
            first[0] = False
            return torch.zeros(z.shape[0], 3, n, 8, 8)

        return SimpleNamespace(decode=dec)


def _chunk() -> Tensor:
    return torch.zeros(1, 4, 2, 1, 1)


# ---- which chunks are switches ----------------------------------------------------------------------------------
def test_switch_chunks_are_where_a_new_prompt_takes_over() -> None:
    texts = chunk_texts(PROMPTS, 7, [2, 4])
    assert texts[4] == PROMPTS[2] and texts[5] == PROMPTS[2].removeprefix(CUT)  # the shot's later chunks: bare
    assert prompt_switches(texts) == [2, 4]  # the bare caption after the cut chunk is no new prompt
    assert prompt_switches(chunk_texts(PROMPTS[:1], 4, None)) == []
    assert prompt_switches(chunk_texts([CUT + "a cat", "a dog"], 4, [2])) == [2]
    assert prompt_switches(chunk_texts([CUT + "a cat", "a cat"], 4, [2])) == []  # the chunks' text never changes
    assert prompt_switches(["a", CUT + "a", "a", CUT + "a"]) == [1, 3]  # a cut is a switch, caption or not
    assert prompt_switches(["a", "b", "b", "a"]) == [1, 3]
    assert prompt_switches(["> a", "a", "> b"], prefix="> ") == [2]  # the spec's prefix, not the default one


# ---- the bookkeeping: land - submit, median, None ----------------------------------------------------------------
def test_latency_is_land_minus_submit_in_chunk_order() -> None:
    land = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert switch_latencies({3: 1.5, 1: 0.5}, land) == [1.5, 6.5]
    assert switch_latencies({}, land) == []
    with pytest.raises(ValueError, match=r"switch chunks \[5\] never landed: the decoder holds 5 chunks"):
        switch_latencies({2: 0.0, 5: 0.0}, land)


def test_row_columns_median_over_switches_and_none_without_one() -> None:
    dec = SimpleNamespace(land_times=[1.0, 3.0, 6.0, 10.0, 15.0])
    cols = switch_columns({1: 2.0, 2: 4.0, 4: 5.0}, dec)
    assert cols == {"switch_latency_s": 2.0, "switch_latency_s_per_switch": [1.0, 2.0, 10.0]}
    assert switch_columns({1: 2.0, 3: 4.0}, dec)["switch_latency_s"] == statistics.median([1.0, 6.0])
    none = {"switch_latency_s": None, "switch_latency_s_per_switch": None}
    assert switch_columns({}, dec) == none  # one prompt: no switch
    assert switch_columns({1: 2.0}, None) == none  # decode=none: no frame ever lands
    assert "switch_latency_s" in METRICS and "switch_latency_s" in TIMED_METRICS
    assert "switch_latency_s_per_switch" in LIST_METRICS


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_each_submitted_chunk_gets_its_land_time(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fake clock, the stamps say exactly when each chunk landed: streaming inside its own submit, batch all
    at finish() after the last submit, so a batch switch's latency holds every later chunk."""
    clock = FakeClock()
    monkeypatch.setattr(decode, "time", clock)
    dec = make_decoder(mode, StubVAE())
    for _ in range(3):
        dec.submit(_chunk())
    video = dec.finish()
    assert video.shape[1] == 1 + 4 * 5 and len(dec.land_times) == 3
    # streaming: submit stamps t, its chunk lands at t + 1; batch: submits at 1, 2, 3, everything lands at 4
    assert dec.land_times == ([2.0, 4.0, 6.0] if mode == "streaming" else [4.0, 4.0, 4.0])
    assert dec.submit_times == ([1.0, 3.0, 5.0] if mode == "streaming" else [1.0, 2.0, 3.0])
    latency = switch_latencies({1: dec.submit_times[1] - 0.5}, dec.land_times)[0]
    assert latency == (1.5 if mode == "streaming" else 2.5)
    if mode == "batch":  # the switch chunk waited for the chunk after it to be generated and submitted
        assert dec.submit_times[0] + latency > dec.submit_times[2]


@pytest.mark.parametrize("mode", ["batch", "streaming", "async"])
def test_land_times_follow_submits_on_a_real_clock(mode: str) -> None:
    dec = make_decoder(mode, StubVAE())
    for _ in range(4):
        dec.submit(_chunk())
    dec.finish()
    land, sub = dec.land_times, dec.submit_times
    assert len(land) == len(sub) == 4 and land == sorted(land)
    assert all(a <= b for a, b in zip(sub, land, strict=True))  # nothing lands before it was submitted
    if mode == "batch":
        assert len(set(land)) == 1 and land[0] >= sub[-1]


# ---- the chunk loop stamps the switch chunks at their boundary ---------------------------------------------------
def test_generate_stamps_each_switch_chunk_at_its_boundary() -> None:
    model = build_model(CFG, seed=0)
    spec = GenerationSpec(prompts=PROMPTS, frames=4 * CFG.chunk_frames, steps=1, switch_chunks=[1, 3])
    g = torch.Generator().manual_seed(0)
    embeds = [torch.randn(1, CFG.text_len, CFG.text_dim, generator=g) for _ in spec.texts]
    done: list[float] = []
    res = generate(model, spec, embeds, on_chunk=lambda c, x: done.append(time.perf_counter()))
    assert sorted(res.switch_submitted) == [1, 3]
    for c, t in res.switch_submitted.items():  # after the chunk before was handed on, before this one was
        assert done[c - 1] <= t <= done[c]
    one = generate(model, GenerationSpec(prompts=PROMPTS[:1], frames=CFG.chunk_frames, steps=1), embeds[:1])
    assert one.switch_submitted == {}


# ---- one real tiny generation per case ---------------------------------------------------------------------------
def _request(decode_mode: str) -> VideoRequest:
    return VideoRequest(model="tiny", frames=3 * CFG.chunk_frames, steps=1, prompts=PROMPTS[1:], switch_at=[1],
                        decode=decode_mode, progress=False)


def test_tiny_streaming_generation_reports_a_switch_latency(tmp_path) -> None:
    res = make_video(_request("streaming"), tmp_path)
    m = res.metrics
    per = m["switch_latency_s_per_switch"]
    assert len(per) == 1 and m["switch_latency_s"] == per[0]
    assert math.isfinite(per[0]) and 0 < per[0] < m["e2e_s"]  # lands inside the run
    assert res.timing_definition["switch_latency_s"] == SWITCH_LATENCY_DEFINITION


def test_tiny_generation_without_a_decoder_has_no_switch_latency(tmp_path) -> None:
    res = make_video(_request("none"), tmp_path)
    assert res.metrics["switch_latency_s"] is None and res.metrics["switch_latency_s_per_switch"] is None
    assert "switch_latency_s" not in res.timing_definition


def test_generate_command_prints_and_writes_the_switch_latency(tmp_path, capsys) -> None:
    args = ["generate", "--model", "tiny", "--frames", str(3 * CFG.chunk_frames), "--steps", "1", "--decode",
            "streaming", "--no-progress", "--prompt", PROMPTS[0], "--prompt", PROMPTS[2], "--out", str(tmp_path)]
    assert main(args) == 0
    row = json.loads((tmp_path / "result.json").read_text())["rows"][0]
    assert len(row["switch_latency_s_per_switch"]) == 1 and row["switch_latency_s"] > 0
    assert "switch_latency_s" in row["timing_definition"]
    assert f"prompt switch {row['switch_latency_s']:.3f} s to the first frame (median of 1)" in capsys.readouterr().out
