"""Results of the retired experiment scripts, converted once into the runner's result rows.

Before `longlive sweep`, measurements came from `python -m longlive.bench.<script>` (perf, sp, chunks, vae_decode,
lowprec, quant_kernels, train_ladder, dmd_memory; deleted since) and from `longlive generate` before its result.json
took the runner's schema. Their files stay committed under reports/. `convert_bench(path)` turns one such file into
rows of `longlive.runner.schema` (built from `empty_row`, so every column is present), and

    longlive report convert-bench SRC... --out results/legacy/results.jsonl [--force]

writes them as a results store that `longlive report results/legacy --out reports/NAME` renders.

The mapping, one name per concept (docs/architecture.md):
  preset -> model; chunks -> frames (chunks x the chunk's latent frames; train / DMD rows name their latents);
  kv / kv_storage -> kv_quant; precision -> the precision config it ran as: a name (bench.perf, bench.lowprec) is
  kept, a dtype plus the old `quant` / `linear_backend` (bench.sp, bench.chunks, bench.vae_decode, generate) is looked
  up among longlive/experiments/precision/; linear_backend free text ("fp8 _scaled_mm") -> fp8 / emulated / te;
  status oom -> failed with reason "OOM: <error>" (runner.cell.classify_failure's wording), unavailable / skipped ->
  skipped with the error as reason; a timing_definition string -> {metric: text} under the metric(s) it defines;
  hardware: the hardware config naming the manifest's GPU (h100, h200, gb200, cpu), else "gpu"; workload: infer
  (inference ladders), vae_decode, quant_kernels, train (train_ladder), dmd (dmd_memory); experiment
  "legacy-bench:<script>"; cell_id: a hash of the file's bytes and the row's index (converting the same file again
  gives the same ids). A legacy key named like a metric column fills it (a few renamed: COLUMN_RENAMES); every other
  key goes into metrics_extra under its own name (EXTRA_RENAMES where today's rows use another). The manifest is
  kept; the script's arguments (the manifest's config) become the row's config; metrics_extra.legacy_source names the
  file and row.

Derived where today's definition is arithmetic on recorded values: bench.perf gemm_tflops (the FP8 _scaled_mm rate
when the Linears ran real FP8 GEMMs, else the BF16 rate) and mfu = achieved_tflops / gemm_tflops; bench.vae_decode
decode_ms_median (median of decode_ms after the first chunk); train_ladder loss_first / loss_last, tokens_per_s
(tokens_per_sample x samples_per_iter / iter_s) and peak memory (max over the per-rank lists); dmd_memory iter_s
(median of iter_s_all) and the last generator / critic losses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longlive.experiments import EXPERIMENTS_DIR, precision_config, precisions
from longlive.model.presets import get_preset
from longlive.names import COMPILE_MODES, DMD_QUANTISED, EXCHANGE, KV_QUANT, LINEAR_BACKENDS
from longlive.output import check_out_file, write_text_atomic
from longlive.report.compare import gpu_kind
from longlive.runner.schema import METRICS, empty_row

CONVERT_WORD = "convert-bench"
"""The first RESULTS word that makes `longlive report` convert legacy files instead of reporting (report/cli.py)."""
CONVERT_COMMAND = f"longlive report {CONVERT_WORD}"
EXPERIMENT_PREFIX = "legacy-bench:"

SCRIPTS = {  # script -> (what wrote its files, workload of its rows)
    "perf": ("longlive.bench.perf", "infer"),
    "sp": ("longlive.bench.sp", "infer"),
    "chunks": ("longlive.bench.chunks", "infer"),
    "lowprec": ("longlive.bench.lowprec", "infer"),
    "generate": ("longlive generate", "infer"),
    "vae_decode": ("longlive.bench.vae_decode", "vae_decode"),
    "quant_kernels": ("longlive.bench.quant_kernels", "quant_kernels"),
    "train_ladder": ("longlive.bench.train_ladder", "train"),
    "dmd_memory": ("longlive.bench.dmd_memory", "dmd"),
}
"""The retired writers this module reads; the script name is the suffix of the rows' experiment."""

COLUMN_RENAMES = {
    "compile_warmup_s": "compile_s",                        # bench.perf: the compile warm-up over every window
    "latent_rel_err_vs_fp32_eager": "latent_rel_err_vs_ref",  # bench.perf --fidelity: perf_ladder's FP32 reference
    "kv_cache_gb_per_rank": "kv_cache_gb",                  # bench.sp: rank 0's cache, as an SP cell records it
    "decode_ms_steady_median": "decode_ms_median",          # bench.sp end to end: decode ms after the first chunk
    "mfu_bf16_peak": "mfu",                                 # train_ladder: MFU against the dense BF16 peak
}
"""Legacy key -> today's metric column of the same definition."""

EXTRA_RENAMES = {"bytes_per_forward": "sp_bytes_per_forward", "bytes_by_kind_rank0": "sp_bytes_by_kind",
                 "loss": "losses"}
"""Legacy key -> the metrics_extra name today's workloads use for the same quantity."""

DTYPE_NAMES = {"bfloat16": "bf16", "bf16": "bf16", "float32": "fp32", "fp32": "fp32", "float16": "fp16",
               "fp16": "fp16"}
SP_DECODE = {"parallel": "tiles", "rank0": "streaming", "single": "streaming", "none": "none"}
"""bench.sp's --decode -> today's decode mode (tiles over the SP ranks, rank 0 streaming, one GPU streaming)."""
TRAIN_LADDER = {  # train_ladder's --config -> (training precision, train layout, SP over the whole world)
    "bf16-nosp": ("bf16", "none", False),
    "bf16-traditional": ("bf16", "traditional", True),
    "bf16-balanced": ("bf16", "balanced", True),
    "fp8-balanced": ("fp8", "balanced", True),
    "nvfp4-emulated-balanced": ("nvfp4", "balanced", True),
}
DMD_LADDER = {"bf16": "none", "nvfp4-generator": "generator", "nvfp4-generator-teacher": "generator+real",
              "nvfp4-all": "generator+real+critic"}
"""dmd_memory's --config -> dmd_quantised (its fp8-all rung has no counterpart today and is refused)."""

TRAIN_TIMING = ("iter_s (train_ladder): wall time of one optimiser iteration (data, forward, backward, gradient "
                "reduce-scatter, clip, AdamW, EMA) between two cuda.synchronize + world barriers, median over the "
                "iterations after the first (a warm-up: it compiles FlexAttention); mfu: useful FLOPs of the "
                "iteration (3 x forward, recompute not counted, masked attention at its density, every SP group's "
                "sample) / (iter_s x world x dense BF16 peak)")
TRAIN_MEMORY = ("peak_allocated_gb / peak_reserved_gb (train_ladder): max over ranks of torch's peaks; "
                "device_used_gb: max over ranks of NVML device use (per-rank values in metrics_extra)")
DMD_TIMING = ("iter_s (dmd_memory): wall time per DMD iteration between cuda.synchronize calls, median over all "
              "iterations (iteration 0 updates generator and critic, later ones the critic); peak_allocated_gb: "
              "torch's peak during the iterations, construction excluded (resident_gb: allocated after it)")
PERF_ROOFLINE = ("bench.perf: gemm / attention rates measured in the same process at the model's shapes (dense GEMM "
                 "at the FFN shape, BF16 and FP8 _scaled_mm; attention at the steady-state window shape); "
                 "ceiling_fps from those rates; fraction_of_ceiling = denoise_fps / ceiling_fps; gemm_tflops is the "
                 "rate of the GEMMs the Linears ran and mfu = achieved_tflops / gemm_tflops (both derived at "
                 "conversion)")
PERF_FIDELITY = ("latent_rel_err_vs_ref (bench.perf --fidelity latent_rel_err_vs_fp32_eager): ||latents - ref|| / "
                 "||ref|| over the whole video, ref = the same weights run eagerly in FP32 at the same step count")


@dataclass(frozen=True)
class Source:
    """One legacy row's origin: file, index, script, its manifest, and the file's hash (for the cell id)."""

    path: Path
    index: int
    script: str
    manifest: dict
    digest: str

    @property
    def where(self) -> str:
        return f"{self.path}: row {self.index}"

    @property
    def cell_id(self) -> str:
        return hashlib.sha256(f"{self.digest}:{self.index}".encode()).hexdigest()[:16]


def _unrecognised(path: Path, why: str) -> ValueError:
    names = ", ".join(SCRIPTS)
    return ValueError(f"{path}: not a result file of a retired bench script ({names}): {why}")


def is_runner_row(row: Any) -> bool:
    """A row in the runner's schema (a sweep's results.jsonl, today's `longlive generate` result.json)."""
    return isinstance(row, dict) and {"cell_id", "experiment", "workload", "status"} <= row.keys()


def _read(path: Path) -> Any:
    """The parsed file: a list of rows for .jsonl, the JSON value otherwise (ValueError naming the file)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _unrecognised(path, f"not JSON ({exc})") from None


def _config_of(manifest: Any) -> dict:
    cfg = manifest.get("config") if isinstance(manifest, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def identify(path: Path, data: Any) -> str:
    """The script that wrote `data` (parsed from `path`), or ValueError naming the file."""
    if isinstance(data, list):
        rows = data
        if path.suffix != ".jsonl":
            raise _unrecognised(path, "a JSON list (the train-5b probes and other one-off files are not bench rows)")
        if not rows:
            raise _unrecognised(path, "no rows")
        if any(is_runner_row(r) for r in rows):
            raise ValueError(f"{path} is already a results store in the runner's schema: give it to `longlive report` "
                             "as it is")
        if all(isinstance(r, dict) and "preset" in r and "denoise_fps" in r
               and ("gemm_bf16_tflops" in r or "configs" in _config_of(r.get("manifest"))) for r in rows):
            return "perf"
        raise _unrecognised(path, "JSON lines that are not bench.perf rows (preset, denoise_fps, gemm_*_tflops)")
    if not isinstance(data, dict):
        raise _unrecognised(path, f"a JSON {type(data).__name__}")
    if isinstance(data.get("rows"), list):
        rows = data["rows"]
        if rows and all(is_runner_row(r) for r in rows):
            raise ValueError(f"{path} already holds rows in the runner's schema: give it to `longlive report` as it is")
        if not rows or not all(isinstance(r, dict) for r in rows):
            raise _unrecognised(path, "'rows' is empty or not a list of objects")
        cfg = _config_of(data.get("manifest"))
        if "copy" in data or all("kernel" in r and "impl" in r for r in rows):
            return "quant_kernels"
        if cfg.get("command") == "generate":
            return "generate"
        if "exchanges" in cfg:
            return "sp"
        if "precisions" in cfg:
            return "lowprec"
        if "channels_last" in cfg or all("vae" in r and "decode_fps" in r for r in rows):
            return "vae_decode"
        if all("preset" in r and "chunks" in r and "denoise_fps" in r for r in rows):
            return "chunks"
        raise _unrecognised(path, f"rows with keys {sorted(rows[0])[:12]} match no script")
    if is_runner_row(data):
        raise ValueError(f"{path} is one row in the runner's schema (a cell's row file), not a bench result")
    if isinstance(data.get("config"), str) and "status" in data:
        if data.get("timing") == "dmd_iter_s" or "latents" in data or data["config"] in DMD_LADDER:
            return "dmd_memory"
        if data.get("timing") == "train_iter_s" or "frames" in data or data["config"] in TRAIN_LADDER:
            return "train_ladder"
        raise _unrecognised(path, f"a single-config row ({data['config']!r}) of neither train_ladder nor dmd_memory")
    raise _unrecognised(path, f"keys {sorted(data)[:12]}: neither 'rows' + 'manifest' nor 'config' + 'status'")


def legacy_script(path: Path) -> str | None:
    """The retired script that wrote `path` if it is one of their files, else None (a runner store, another file,
    unreadable text): `longlive report` uses it to point at the conversion instead of a confusing error."""
    path = Path(path)
    try:
        if path.suffix == ".jsonl":  # a store can be large: its first row decides
            with path.open("rb") as f:
                first = next((line for line in f if line.strip()), None)
            data = [json.loads(first)] if first is not None else []
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            return None
        return identify(path, data)
    except (OSError, ValueError):  # JSONDecodeError is a ValueError
        return None


def legacy_message(path: Path, script: str | None = None) -> str:
    """The error `longlive report` gives for a legacy file or folder: what it is and the command that converts it."""
    if script is None:
        what = "results of the retired bench scripts"
    elif script == "generate":
        what = "a result of `longlive generate` from before its result.json took the runner's schema"
    else:
        what = f"results of the retired `python -m {SCRIPTS[script][0]}`"
    return (f"{path} holds {what}, not a results store in the runner's schema; convert them once with "
            f"`{CONVERT_COMMAND} {path} --out results/legacy/results.jsonl`, then run "
            f"`longlive report results/legacy --out reports/NAME`")


# ---- value mappings ------------------------------------------------------------------------------------------------


@functools.cache
def _precision_table() -> dict[tuple[str, str, str | None], str]:
    """(dtype, linear_quant, linear_backend) -> precision config name, from longlive/experiments/precision/. Bench rows
    predate static activation scales, so only the dynamic-scale configs are candidates."""
    table = {}
    for name in precisions():
        cfg = precision_config(name)
        if cfg.get("act_scale", "dynamic") != "dynamic":
            continue
        quant = cfg.get("linear_quant") or "none"
        table[(cfg["dtype"], quant, cfg.get("linear_backend") if quant != "none" else None)] = name
    return table


def _names_in(group: str) -> set[str]:
    return {p.stem for p in (EXPERIMENTS_DIR / group).glob("*.yaml")}


def _backend(src: Source, text: Any) -> str | None:
    """A linear_backend value: None, or one of LINEAR_BACKENDS from the bench's free text ('fp8 _scaled_mm')."""
    if text is None:
        return None
    s = str(text).strip().lower()
    if s in LINEAR_BACKENDS:
        return s
    if "_scaled_mm" in s or s.split()[0] == "fp8":
        return "fp8"
    if "emul" in s:
        return "emulated"
    if "transformer" in s or s.split()[0] == "te":
        return "te"
    raise ValueError(f"{src.where}: linear_backend {text!r} is none of {', '.join(LINEAR_BACKENDS)}")


def _lookup_precision(src: Source, dtype: str, quant: str, backend: str | None) -> tuple[str, str, str | None]:
    """(precision name, linear_quant, linear_backend) of the precision config with these fields."""
    key = (dtype, quant, backend if quant != "none" else None)
    name = _precision_table().get(key)
    if name is None:
        raise ValueError(f"{src.where}: no precision config in longlive/experiments/precision/ has dtype={dtype}, "
                         f"linear_quant={quant}, linear_backend={backend}")
    return name, quant, key[2]


def _named_precision(src: Source, name: Any, backend_text: Any) -> tuple[str, str, str | None]:
    """A precision recorded by name (bench.perf, bench.lowprec): checked, and its backend taken from the row."""
    if name not in precisions():
        raise ValueError(f"{src.where}: precision {name!r} is not a precision config ({', '.join(precisions())})")
    cfg = precision_config(name)
    quant = cfg.get("linear_quant") or "none"
    backend = _backend(src, backend_text) or cfg.get("linear_backend")
    return _lookup_precision(src, cfg["dtype"], quant, backend)


def _dtype_precision(src: Source, dtype: Any, quant: Any, backend_text: Any) -> tuple[str, str, str | None]:
    """A precision recorded as a dtype plus the old `quant` (bench.sp, chunks, vae_decode, generate)."""
    d = DTYPE_NAMES.get(str(dtype).strip().lower()) if dtype is not None else None
    if d is None:
        raise ValueError(f"{src.where}: precision / dtype {dtype!r} is none of {', '.join(sorted(DTYPE_NAMES))}")
    q = "none" if quant in (None, "none", False) else str(quant).lower()
    backend = _backend(src, backend_text)
    if q != "none" and backend is None:  # bench.sp: real FP8 GEMMs on CUDA, emulated elsewhere
        backend = "fp8" if q == "fp8" and _hardware(src.manifest) != "cpu" else "emulated"
    return _lookup_precision(src, d, q, backend)


def _hardware(manifest: dict) -> str:
    """The hardware config naming the manifest's device: cpu, h100 / h200 / gb200, else the generic 'gpu'."""
    gpu = manifest.get("gpu")
    if not gpu:
        return "gpu"
    if str(gpu).strip().lower() == "cpu":
        return "cpu"
    kind = gpu_kind(gpu)
    return kind.lower() if kind and kind.lower() in _names_in("hardware") else "gpu"


def _model(src: Source, preset: Any):
    try:
        return get_preset(str(preset))
    except ValueError as exc:
        raise ValueError(f"{src.where}: {exc}") from None


def _choice(src: Source, field: str, value: Any, allowed: tuple[str, ...] | set[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{src.where}: {field}={value!r} is none of {', '.join(sorted(allowed))}")
    return value


def _kv(src: Source, row: dict) -> str:
    kv = next((row[k] for k in ("kv_quant", "kv", "kv_storage") if row.get(k) is not None), "none")
    return "none" if str(kv).lower() in DTYPE_NAMES else _choice(src, "kv_quant", str(kv).lower(), KV_QUANT)


def _compile(src: Source, value: Any) -> str:
    if value in (None, False):
        return "none"
    if value is True:  # bench.vae_decode --compile: the fused RMSNorm+SiLU, compile=default today
        return "default"
    return _choice(src, "compile", str(value), COMPILE_MODES)


def _status(src: Source, row: dict) -> tuple[str, str | None]:
    status = row.get("status", "ok")
    if status == "ok":
        return "ok", None
    error = str(row.get("error") or row.get("reason") or "no error recorded").strip()
    if status == "oom":
        return "failed", "OOM: " + (error.splitlines() or ["out of memory"])[0][:500]
    if status in ("unavailable", "skipped"):
        return "skipped", error
    raise ValueError(f"{src.where}: status {status!r} is none of ok, oom, unavailable, skipped")


def _timing(text: Any, default: tuple[str, ...]) -> dict[str, str]:
    """A legacy timing definition as {metric: text}: a dict is kept; a string goes under every metric it defines
    ('denoise_fps: ...', 'decode_ms: ...; decode_fps: ...'), else under `default`."""
    if isinstance(text, dict):
        return {str(k): str(v) for k, v in text.items()}
    if not text:
        return {}
    keys = []
    for name in re.findall(r"(?:^|;\s*)([a-z][a-z0-9_]*):", str(text)):
        name = {"decode_ms": "decode_ms_median"}.get(name, COLUMN_RENAMES.get(name, name))
        if name in METRICS and name not in keys:
            keys.append(name)
    return {k: str(text) for k in keys or default}


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _spread(row: dict, src_row: dict, consumed: set[str]) -> None:
    """Legacy keys into the row: metric columns (direct names first, then COLUMN_RENAMES), the rest metrics_extra."""
    extra = row["metrics_extra"]
    renamed = []
    for k, v in src_row.items():
        if k in consumed:
            continue
        if k in METRICS and _number(v):
            row[k] = v
        elif k in COLUMN_RENAMES and _number(v):
            renamed.append((k, v))
        else:
            extra[EXTRA_RENAMES.get(k, k)] = v
    for k, v in renamed:
        if row[COLUMN_RENAMES[k]] is None:
            row[COLUMN_RENAMES[k]] = v
        else:
            extra[k] = v


def _new_row(src: Source, axes: dict, frames: Any, status: tuple[str, str | None] = ("ok", None)) -> dict:
    row = empty_row(src.cell_id, EXPERIMENT_PREFIX + src.script, SCRIPTS[src.script][1],
                    {**axes, "hardware": _hardware(src.manifest)}, _int(frames), _int(src.manifest.get("seed")))
    row["status"], row["reason"] = status
    row["manifest"] = src.manifest
    row["config"] = dict(_config_of(src.manifest))
    row["started_at"] = src.manifest.get("date")
    row["metrics_extra"]["legacy_source"] = {"script": SCRIPTS[src.script][0], "file": str(src.path),
                                             "row": src.index}
    return row


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _frames_of_chunks(src: Source, row: dict, chunk_frames: int) -> int | None:
    chunks = row.get("chunks", _config_of(src.manifest).get("chunks"))
    return int(chunks) * int(row.get("chunk_frames") or chunk_frames) if _int(chunks) is not None else None


# ---- one converter per kind of file --------------------------------------------------------------------------------

INFER_CONSUMED = {"preset", "precision", "quant", "linear_backend", "kv_quant", "kv", "kv_storage", "steps", "compile",
                  "chunks", "sp", "exchange", "decode", "frames_latent", "status", "error", "reason",
                  "timing_definition", "manifest", "artifacts"}


def _infer(src: Source, r: dict) -> dict:
    """bench.perf / sp / chunks / lowprec rows and old generate rows: one inference cell each."""
    cfg = _model(src, r.get("preset"))
    script = src.script
    if script in ("perf", "lowprec"):
        precision, lq, lb = _named_precision(src, r.get("precision"), r.get("linear_backend"))
    else:
        args = _config_of(src.manifest)
        precision, lq, lb = _dtype_precision(src, r.get("precision", args.get("dtype")), r.get("quant"),
                                             r.get("linear_backend"))
    if script == "sp":
        decode = SP_DECODE.get(str(r.get("decode", "none")))
        if decode is None:
            raise ValueError(f"{src.where}: bench.sp decode={r.get('decode')!r} is none of {', '.join(SP_DECODE)}")
    elif script == "generate":
        decode = _choice(src, "decode", r.get("decode"), _names_in("decode"))
    else:  # perf / chunks / lowprec time the denoiser alone (lowprec decodes a few latents for PSNR afterwards)
        decode = "none"
    sp = _int(r.get("sp")) or 1
    axes = {"model": cfg.name, "precision": precision, "kv_quant": _kv(src, r), "sp": sp,
            "exchange": _choice(src, "exchange", r.get("exchange") or "none", EXCHANGE), "steps": _int(r.get("steps")),
            "decode": decode, "compile": _compile(src, r.get("compile"))}
    if script == "generate":
        frames = r.get("frames_latent", _config_of(src.manifest).get("frames"))
    else:
        frames = _frames_of_chunks(src, r, cfg.chunk_frames)
    row = _new_row(src, axes, frames, _status(src, r))
    row["linear_quant"], row["linear_backend"] = lq, lb
    if lq == "nvfp4" and script == "generate":
        row["weight_rule"] = _config_of(src.manifest).get("weight_rule")
    _spread(row, r, INFER_CONSUMED)
    if isinstance(r.get("artifacts"), dict):  # generate: paths relative to its folder; absolute until written
        row["artifacts"] = {k: str((src.path.parent / v).resolve()) for k, v in r["artifacts"].items()
                            if isinstance(v, str)}
    timing = _timing(r.get("timing_definition"), ("denoise_fps",))
    if script == "perf":
        real_fp8 = (lq, lb) == ("fp8", "fp8")
        row["gemm_tflops"] = r.get("gemm_fp8_tflops" if real_fp8 else "gemm_bf16_tflops")
        if _number(row["achieved_tflops"]) and row["achieved_tflops"] and row["gemm_tflops"]:
            row["mfu"] = row["achieved_tflops"] / row["gemm_tflops"]
        timing["roofline"] = PERF_ROOFLINE
        if r.get("latent_rel_err_vs_fp32_eager") is not None:
            timing["latent_rel_err_vs_ref"] = PERF_FIDELITY
    if script == "lowprec" and r.get("psnr_vs_ref") is not None:
        ref = _config_of(src.manifest).get("reference", "the file's first cell")
        timing["psnr_vs_ref"] = (f"psnr_vs_ref (bench.lowprec): PSNR of the first {r.get('psnr_frames')} decoded "
                                 f"frames against {ref}; latent_rel_err_vs_ref over all latents against it")
    row["timing_definition"] = timing
    return row


def _vae(src: Source, r: dict) -> dict:
    cfg = _model(src, r.get("preset"))
    args = _config_of(src.manifest)
    precision, lq, lb = _dtype_precision(src, r.get("precision", args.get("dtype")), None, None)
    axes = {"model": cfg.name, "precision": precision, "sp": 1, "compile": _compile(src, r.get("compile"))}
    chunk = int(r.get("chunk_latents") or cfg.chunk_frames)
    ms = r.get("decode_ms")
    chunks = len(ms) if isinstance(ms, list) else args.get("chunks")
    row = _new_row(src, axes, chunks * chunk if _int(chunks) is not None else None, _status(src, r))
    row["linear_quant"] = lq
    _spread(row, r, {"preset", "precision", "compile", "status", "error", "reason", "timing_definition", "manifest"})
    if isinstance(ms, list) and len(ms) > 1 and row["decode_ms_median"] is None:
        row["decode_ms_median"] = statistics.median(ms[1:])
    row["timing_definition"] = _timing(r.get("timing_definition"), ("decode_fps", "decode_ms_median"))
    return row


def _quant_kernels(src: Source, data: dict) -> dict:
    axes = {"model": "wan2.2-ti2v-5b", "precision": "bf16", "sp": 1, "compile": "none"}  # the bench's 5B shapes
    row = _new_row(src, axes, None)
    row["metrics_extra"].update(kernels=data["rows"], copy=data.get("copy"), sweep=data.get("sweep"),
                                copy_gbps=(data.get("copy") or {}).get("gbps"))
    row["timing_definition"] = {"kernels": str(data.get("timing_definition") or "")}
    return row


def _train(src: Source, r: dict) -> dict:
    cfg = _model(src, r.get("preset", _config_of(src.manifest).get("preset")))
    name = r.get("config")
    ladder = TRAIN_LADDER.get(name)
    precision = r.get("precision") or (ladder[0] if ladder else None)
    layout = r.get("train_layout") or r.get("sp_layout") or (ladder[1] if ladder else None)
    if precision is None or layout is None:
        raise ValueError(f"{src.where}: train_ladder config {name!r} names no precision / layout "
                         f"(known: {', '.join(TRAIN_LADDER)})")
    _choice(src, "precision", precision, set(precisions()))
    world = _int(r.get("world")) or _int(src.manifest.get("gpu_count")) or 1
    sp = _int(r.get("sp")) or (world if ladder and ladder[2] else 1)
    axes = {"model": cfg.name, "precision": precision, "sp": sp, "compile": "none", "dp": max(world // sp, 1),
            "train_layout": layout if sp > 1 else "none", "error_recycling": False}
    row = _new_row(src, axes, r.get("frames", _config_of(src.manifest).get("frames")), _status(src, r))
    consumed = {"config", "preset", "frames", "precision", "sp_layout", "train_layout", "sp", "status", "error",
                "reason", "timing", "manifest"}
    _spread(row, r, consumed)
    row["metrics_extra"]["bench_config"] = name
    losses = r.get("loss")
    if isinstance(losses, list) and losses:
        row["loss_first"], row["loss_last"] = losses[0], losses[-1]
    tokens, samples = _int(r.get("tokens_per_sample")), _int(r.get("samples_per_iter"))
    if _number(row["iter_s"]) and row["iter_s"] and tokens and samples:
        row["tokens_per_s"] = tokens * samples / row["iter_s"]
    for col in ("peak_allocated_gb", "peak_reserved_gb", "device_used_gb"):
        per_rank = [v for v in (r.get(f"{col}_per_rank") or []) if _number(v) and v is not None]
        if per_rank and row[col] is None:
            row[col] = max(per_rank)
    row["timing_definition"] = {"iter_s": TRAIN_TIMING, "mfu": TRAIN_TIMING, "peak_allocated_gb": TRAIN_MEMORY}
    return row


def _rung(src: Source, r: dict) -> str:
    formats = r.get("frozen_formats")
    if isinstance(formats, dict):
        names = {"generator": "generator", "teacher": "real", "critic": "critic"}
        if any(v not in ("none", "nvfp4") for v in formats.values()):
            raise ValueError(f"{src.where}: frozen formats {formats} have no dmd_quantised rung (NVFP4 only today)")
        rung = "+".join(n for k, n in names.items() if formats.get(k) == "nvfp4") or "none"
    else:
        rung = DMD_LADDER.get(r.get("config"))
        if rung is None:
            raise ValueError(f"{src.where}: dmd_memory config {r.get('config')!r} has no dmd_quantised rung today "
                             f"(those with one: {', '.join(DMD_LADDER)})")
    return _choice(src, "dmd_quantised", rung, DMD_QUANTISED)


def _dmd(src: Source, r: dict) -> dict:
    args = _config_of(src.manifest)
    cfg = _model(src, r.get("preset", args.get("preset")))
    axes = {"model": cfg.name, "precision": "bf16", "sp": 1, "compile": "none", "dmd_quantised": _rung(src, r)}
    row = _new_row(src, axes, r.get("latents", args.get("latents")), _status(src, r))
    _spread(row, r, {"config", "preset", "latents", "status", "error", "reason", "timing", "memory", "manifest"})
    row["metrics_extra"]["bench_config"] = r.get("config")
    secs = [s for s in (r.get("iter_s_all") or []) if _number(s) and s is not None]
    if secs and row["iter_s"] is None:
        row["iter_s"] = statistics.median(secs)
    steps = [s for s in (r.get("steps") or []) if isinstance(s, dict)]
    gen = [s["generator_loss"] for s in steps if s.get("generator_loss") is not None]
    if gen and row["generator_loss"] is None:
        row["generator_loss"] = gen[-1]
    if steps and row["critic_loss"] is None:
        row["critic_loss"] = steps[-1].get("critic_loss")
    row["timing_definition"] = {"iter_s": DMD_TIMING, "peak_allocated_gb": DMD_TIMING}
    return row


CONVERTERS = {"perf": _infer, "sp": _infer, "chunks": _infer, "lowprec": _infer, "generate": _infer,
              "vae_decode": _vae, "train_ladder": _train, "dmd_memory": _dmd}


def convert_bench(path: str | os.PathLike) -> list[dict]:
    """The rows of one legacy file (bench.perf rows.jsonl, a bench JSON with 'rows' + 'manifest', a train_ladder /
    dmd_memory single-config JSON, an old generate result.json) in today's runner schema, file order.
    ValueError naming the file (and row) for anything it does not recognise."""
    path = Path(path)
    data = _read(path)
    script = identify(path, data)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if script == "quant_kernels":
        return [_quant_kernels(Source(path, 0, script, dict(data.get("manifest") or {}), digest), data)]
    if script == "perf":
        beside = path.parent / "manifest.json"
        shared = json.loads(beside.read_text()) if beside.is_file() else {}
        rows = [(r, r.get("manifest") if isinstance(r.get("manifest"), dict) else shared) for r in data]
    elif script in ("train_ladder", "dmd_memory"):
        rows = [(data, data.get("manifest") or {})]
    else:
        rows = [(r, data.get("manifest") or {}) for r in data["rows"]]
    return [CONVERTERS[script](Source(path, i, script, dict(manifest), digest), r)
            for i, (r, manifest) in enumerate(rows)]


# ---- the command ---------------------------------------------------------------------------------------------------


def legacy_files(folder: Path, max_checked: int | None = None) -> list[Path]:
    """The legacy result files under `folder` (recursive, sorted); bench.perf's manifest.json is not one. With
    `max_checked`, at most that many candidate files are read (a quick 'are there any' for an error message)."""
    found, checked = [], 0
    for p in sorted(Path(folder).rglob("*.json*")):
        if p.suffix not in (".json", ".jsonl") or not p.is_file():
            continue
        if max_checked is not None and checked >= max_checked:
            break
        checked += 1
        if legacy_script(p) is not None:
            found.append(p)
    return found


def expand_sources(sources: list[Path]) -> list[Path]:
    """Files as given (each must be a legacy file: convert_bench says why not) and, for a folder, the legacy files
    under it; each file once (by content: a copy would give the same cell ids)."""
    files: list[Path] = []
    for s in map(Path, sources):
        if s.is_dir():
            found = legacy_files(s)
            if not found:
                raise ValueError(f"{s} holds no result files of the retired bench scripts ({', '.join(SCRIPTS)})")
            files += found
        elif not s.exists():
            raise FileNotFoundError(f"{s} does not exist")
        else:
            files.append(s)
    seen, out = set(), []
    for f in files:
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(f)
    return out


def _relative_artifacts(rows: list[dict], folder: Path) -> None:
    """Artifact paths relative to the written store's folder (how the report resolves them)."""
    for r in rows:
        r["artifacts"] = {k: os.path.relpath(v, folder.resolve()) if os.path.isabs(v) else v
                          for k, v in r["artifacts"].items()}


def write_converted(sources: list[Path], out: Path, *, force: bool = False) -> tuple[Path, list[dict], list[Path]]:
    """Convert every source (files, or folders searched for legacy files) into one results.jsonl at `out`.
    Refuses an existing `out` unless `force`; nothing is written unless every file converts. Returns (out, rows,
    files converted)."""
    out = Path(out)
    if out.suffix != ".jsonl":
        raise ValueError(f"--out {out}: give the results file to write, e.g. results/legacy/results.jsonl")
    check_out_file(out)
    if out.exists() and not force:
        raise ValueError(f"--out {out} exists; pass --force to replace it")
    files = expand_sources(sources)
    rows = [row for f in files for row in convert_bench(f)]
    _relative_artifacts(rows, out.parent)
    write_text_atomic(out, "".join(json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in rows))
    return out, rows, files
