"""The rules of the run spec's fields, one function per rule, shared by `check_spec` (sweeps at expansion, workloads,
`longlive train`) and `infer.video.validate` (`longlive generate`, `fidelity`), so a value is accepted or refused the
same way, with the same words, everywhere.

Each message names the field, the value, what is allowed and the fix. `cli=True` names a field by its command-line
flag (`--steps 0`), else by its config key (`steps=0`); both are the same name (docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from longlive.model.kv_cache import CacheGeometry
from longlive.model.presets import ModelConfig
from longlive.names import LORA_MODES, VAE_TYPES, check_choice
from longlive.parallel.groups import check_sp as check_sp_split
from longlive.quant.kv import DEFAULT_KV_RULE
from longlive.quant.nvfp4 import RULES as NVFP4_RULES
from longlive.quant.recipes import DEFAULT_ACT_RULE, check_exclude_patterns
from longlive.text.prompts import bare_caption, check_scene_cut_prefix
from longlive.vae.lightvae import check_rate

SEED_MAX = 2**63 - 1
"""Largest seed: torch's generators take a signed 64-bit integer."""

DEVICE_TYPES = ("cpu", "cuda")
"""Device kinds a run may name (`cuda:N` for one GPU)."""


def flag(field: str, cli: bool) -> str:
    """The field's name as the user typed it: `--vae-device` on the command line, `vae_device` in a config."""
    return "--" + field.replace("_", "-") if cli else field


def said(field: str, value: object, cli: bool) -> str:
    """`--steps 0` or `steps=0`: the field and the value given."""
    return f"{flag(field, cli)} {value}" if cli else f"{field}={value!r}"


def give(field: str, value: object, cli: bool) -> str:
    """`--frames 4` or `frames=4`: a value to give instead, as the user would type it."""
    return f"{flag(field, cli)} {value}" if cli else f"{field}={value}"


def check_one_of(field: str, value: object, allowed: Sequence[str], cli: bool = False) -> None:
    """The value must be one of a fixed set (`longlive.names.check_choice`, or in a flag's words)."""
    if cli and value not in allowed:
        raise ValueError(f"unknown {flag(field, cli)} {value!r}; choose one of {', '.join(allowed)}")
    check_choice(field, value, tuple(allowed))


def check_at_least(field: str, value: int, low: int, cli: bool = False, meaning: str = "") -> None:
    """An integer count with a lower bound (`meaning`: what the field counts, shown with the fix)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{said(field, value, cli)} must be ≥ {low}{f' ({meaning})' if meaning else ''}: give "
                         f"{flag(field, cli)} as a whole number ≥ {low}")


def check_finite(field: str, value: float, cli: bool = False, low: float = 0.0, strict: bool = True,
                 meaning: str = "") -> None:
    """A finite number above `low` (strict) or at least `low`."""
    ok = isinstance(value, int | float) and math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{said(field, value, cli)} must be a finite number {'>' if strict else '≥'} {low:g}"
                         f"{f' ({meaning})' if meaning else ''}")


def check_steps(steps: int, cli: bool = False) -> None:
    """Denoising steps per chunk: any count ≥ 1 (the sigma grid is built for any N)."""
    check_at_least("steps", steps, 1, cli, "denoising steps per chunk; any N ≥ 1 works")


def check_seed(seed: int, cli: bool = False) -> None:
    """The seed must fit torch's generator (a signed 64-bit integer; negative seeds are refused)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{said('seed', seed, cli)} is outside the valid seed range 0..2**63-1 ({SEED_MAX}): "
                         f"give {flag('seed', cli)} in that range")


def check_frames(frames: int, cfg: ModelConfig, cli: bool = False) -> None:
    """Latent frames: whole chunks of the preset, at least one."""
    chunk = cfg.chunk_frames
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < chunk:
        raise ValueError(f"{said('frames', frames, cli)} must be ≥ 1 chunk: the {cfg.name} chunk is {chunk} latent "
                         f"frames, so give {give('frames', chunk, cli)}, {2 * chunk}, … (a multiple of {chunk})")
    if frames % chunk:
        low, high = frames - frames % chunk, frames - frames % chunk + chunk
        raise ValueError(f"{said('frames', frames, cli)} is not a multiple of the {cfg.name} chunk of {chunk} latent "
                         f"frames: give {give('frames', low, cli)} or {high}")


def check_sp(sp: int, cfg: ModelConfig, cli: bool = False) -> None:
    """Sequence-parallel ranks: ≥ 1, and a divisor of the preset's heads and of a chunk's frames."""
    check_at_least("sp", sp, 1, cli, "sequence-parallel ranks; 1: none")
    try:
        check_sp_split(cfg, sp)
    except ValueError as exc:
        ok = [n for n in range(1, cfg.num_heads + 1) if not cfg.num_heads % n and not cfg.chunk_frames % n]
        raise ValueError(f"{exc}: give {flag('sp', cli)} one of {', '.join(map(str, ok))}") from None


def check_exchange(exchange: str, allowed: Sequence[str], sp: int, cli: bool = False) -> None:
    """SP all-to-all compression: a known format, and only where there are all-to-alls (sp ≥ 2)."""
    check_one_of("exchange", exchange, allowed, cli)
    if exchange != "none" and sp < 2:
        raise ValueError(f"{said('exchange', exchange, cli)} compresses the sequence-parallel all-to-alls, which "
                         f"{said('sp', sp, cli)} does not have: it needs {flag('sp', cli)} ≥ 2 (or "
                         f"{give('exchange', 'none', cli)})")


def check_device_string(field: str, value: str, cli: bool = False) -> torch.device:
    """A device string torch parses, of a kind this harness runs on."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise ValueError(f"{said(field, value, cli)} is not a device: give cpu, cuda or cuda:N (e.g. "
                         f"{give(field, 'cuda:0', cli)})")
    return dev


def check_device_present(field: str, value: str, cli: bool = False) -> None:
    """The device exists on this machine (generate: an error; a sweep makes it an explained skip instead)."""
    dev = check_device_string(field, value, cli)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.type == "cuda" and (dev.index or 0) >= gpus:
        raise ValueError(f"{said(field, value, cli)}: device {value} is not available on this machine (it has {gpus} "
                         f"GPU{'s' if gpus != 1 else ''}): give {flag(field, cli)} cpu"
                         + (f" or cuda:0..cuda:{gpus - 1}" if gpus else ""))


def check_decode(mode: str, allowed: Sequence[str], sp: int, device: str, vae_device: str | None,
                 cli: bool = False) -> None:
    """The decode mode, and the devices and ranks it needs: tiles splits over SP ranks; device puts the VAE on a
    second device (never silently on the generator's)."""
    check_one_of("decode", mode, allowed, cli)
    if vae_device is not None:
        check_device_string("vae_device", vae_device, cli)
    if mode == "tiles" and (sp < 2 or vae_device):
        raise ValueError(f"decode=tiles splits each chunk's decode over the SP ranks: it needs sp >= 2 (got sp="
                         f"{sp}) and each rank's own GPU (got vae_device={vae_device!r}): give {flag('sp', cli)} 2 or "
                         f"more without {flag('vae_device', cli)}, or another decode mode")
    if mode == "device" and (vae_device is None or torch.device(vae_device) == torch.device(device)):
        given = (f"no {flag('vae_device', cli)} is given" if vae_device is None else
                 f"{said('vae_device', vae_device, cli)} is the generator's own device")
        raise ValueError(f"decode=device puts the VAE on a second device, but {given}: give {flag('vae_device', cli)} "
                         f"a second GPU (e.g. cuda:1; {flag('device', cli)} is {device}), or decode async for a decode "
                         f"thread on the same device")


def check_size(cfg: ModelConfig, height: int | None, width: int | None, cli: bool = False) -> None:
    """Pixel sizes split into whole latent patches: a positive multiple of the VAE stride × patch."""
    for side, value, stride, patch in (("height", height, cfg.vae_stride[1], cfg.patch_size[1]),
                                       ("width", width, cfg.vae_stride[2], cfg.patch_size[2])):
        if value is not None and (value <= 0 or value % (stride * patch)):
            raise ValueError(f"{said(side, value, cli)} is not a positive multiple of {stride * patch} (the "
                             f"{cfg.name} VAE stride {stride} × patch {patch}): the latent must split into whole "
                             f"patches; give {give(side, max(stride * patch, value - value % (stride * patch)), cli)}")


def check_geometry(cfg: ModelConfig, window_frames: int | None, sink_frames: int | None,
                   shot_rope_offset: int | None, multishot_sink: bool = True, cli: bool = False) -> ModelConfig:
    """The window, sink and shot RoPE offset over the preset's, checked as a KV-cache geometry; returns the config."""
    over = {k: v for k, v in (("window_frames", window_frames), ("sink_frames", sink_frames),
                              ("shot_rope_offset", shot_rope_offset)) if v is not None}
    for k, v in over.items():
        check_at_least(k, v, 1 if k == "window_frames" else 0, cli)
    if not over:
        return cfg
    cfg = cfg.with_overrides(**over)
    try:
        CacheGeometry(cfg.chunk_frames, cfg.window_frames, cfg.sink_frames, cfg.tokens_per_frame,
                      multishot_sink and cfg.sink_frames > 0)
    except ValueError as exc:
        raise ValueError(f"{said('window_frames', cfg.window_frames, cli)} {said('sink_frames', cfg.sink_frames, cli)}"
                         f": {exc}") from None
    return cfg


def check_prompts(prompts: Sequence[str], switch_at: Sequence[int] | None, num_chunks: int, prefix: str,
                  chunk_frames: int | None = None, cli: bool = False, default: bool = False) -> list[int]:
    """The prompt plan: non-blank prompts, one chunk each at least, switch chunks increasing inside the video.
    Returns the start chunk of each prompt. `chunk_frames` (when known) turns a chunk count into a frames fix;
    `default`: the prompts are the config's default plan (the user did not give them), which the message says."""
    check_scene_cut_prefix(prefix)
    if not prompts:
        raise ValueError(f"at least one prompt is needed: give {'--prompt TEXT' if cli else 'prompts=[TEXT]'}")
    for i, p in enumerate(prompts):
        name = f"--prompt #{i + 1} {p!r}" if cli else f"prompts[{i}]={p!r}"
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{name} is blank: prompts must not be empty; give a caption or drop it")
        if not bare_caption(p, prefix).strip():
            raise ValueError(f"{name} is only the scene-cut prefix: prompts must not be empty; give a caption "
                             f"after {prefix!r}")
    n = len(prompts)
    if num_chunks < n:
        fix = (f"give {flag('frames', cli)} ≥ {n * chunk_frames} ({n} × the chunk of {chunk_frames})"
               if chunk_frames else "give more frames")
        plan = f" (the default {n}-prompt plan: the config's prompts)" if default else ""
        raise ValueError(f"{n} prompts need at least {n} chunks (one each); the video has {num_chunks}{plan}: {fix}, "
                         f"or give {'one --prompt' if cli else 'one prompt (prompts=[TEXT])'}")
    if switch_at is None:  # spread prompts evenly over the video
        return [0, *(round(i * num_chunks / n) for i in range(1, n))]
    if len(switch_at) != n - 1:
        raise ValueError(f"{n} prompts need {n - 1} switch chunks, got {len(switch_at)} "
                         f"({said('switch_at', list(switch_at), cli)}): give one chunk index per prompt after the "
                         f"first")
    starts = [0, *switch_at]
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)) or starts[-1] >= num_chunks:
        raise ValueError(f"switch chunks {list(switch_at)} must increase strictly and lie in 1..{num_chunks - 1} "
                         f"(the video has {num_chunks} chunks): fix {flag('switch_at', cli)}")
    return starts


def check_release_options(*, lora_mode: str, lora: object, fuse_qkv: bool, ema: bool, random_weights: bool,
                          act_rule: str | None, kv_rule: str, linear_quant: str, act_quant: bool, kv_quant: str,
                          quant_exclude: Sequence[str], cli: bool = False) -> None:
    """The LoRA mode, EMA and quantisation-rule options: known values, and no option that would silently do nothing
    (a rule without the format it belongs to). `act_rule` None: the default rule."""
    check_one_of("lora_mode", lora_mode, LORA_MODES, cli)
    if lora_mode == "runtime" and lora is None:
        raise ValueError(f"{said('lora_mode', 'runtime', cli)} keeps a LoRA file's adapter separate: give the file "
                         f"with {flag('lora', cli)}")
    if lora_mode == "runtime" and fuse_qkv:
        raise ValueError(f"{said('lora_mode', 'runtime', cli)} wraps q, k and v separately, which "
                         f"{flag('fuse_qkv', cli)} replaces by one Linear: use {give('lora_mode', 'merge', cli)} with "
                         f"{flag('fuse_qkv', cli)}")
    if ema and random_weights:
        raise ValueError(f"{flag('ema', cli)} loads a checkpoint's EMA weights; {flag('random_weights', cli)} loads "
                         f"none: drop one of them")
    act_rule = act_rule or DEFAULT_ACT_RULE
    check_one_of("act_rule", act_rule, NVFP4_RULES, cli)
    check_one_of("kv_rule", kv_rule, NVFP4_RULES, cli)
    if act_rule != DEFAULT_ACT_RULE and (linear_quant == "fp8" or not act_quant):
        raise ValueError(f"{said('act_rule', act_rule, cli)} is the NVFP4 activation rule: it needs NVFP4 Linears "
                         f"with quantised activations (linear_quant={linear_quant}, act_quant={act_quant})")
    if kv_rule != DEFAULT_KV_RULE and kv_quant != "nvfp4":
        raise ValueError(f"{said('kv_rule', kv_rule, cli)} is the NVFP4 KV-cache rule: it needs "
                         f"{give('kv_quant', 'nvfp4', cli)} (got {kv_quant}; FP8 has one rule)")
    check_exclude_patterns(list(quant_exclude))
    if quant_exclude and linear_quant == "none":
        raise ValueError(f"{flag('quant_exclude', cli)} chooses block Linears PTQ leaves alone: give a precision with "
                         f"fp8 or nvfp4 Linears ({flag('precision', cli)})")


def check_vae_type(vae_type: str, vae_pruning: float | None, model_vae: str, *, checkpoint: bool,
                   image: bool = False, cli: bool = False) -> None:
    """vae_type: a decoder of a preset whose VAE is Wan2.2, never with image conditioning (MG-LightVAE decodes only);
    vae_pruning: the rate of a randomly initialised MG-LightVAE, refused with a checkpoint (whose rate is its own).
    `checkpoint`: a VAE file will be loaded (not random weights, or a file given)."""
    check_one_of("vae_type", vae_type, VAE_TYPES, cli)
    if vae_type != "wan" and model_vae != "wan2.2":
        raise ValueError(f"{said('vae_type', vae_type, cli)}: MG-LightVAE is the release's pruned Wan2.2 VAE, and this "
                         f"preset decodes with its {model_vae} VAE; give {give('vae_type', 'wan', cli)} (or a preset "
                         f"with the Wan2.2 VAE: wan2.2-ti2v-5b)")
    if vae_type != "wan" and image:
        raise ValueError(f"{said('vae_type', vae_type, cli)} with {flag('image', cli)}: the first frame is encoded by "
                         f"the VAE, and MG-LightVAE is a decoder (the release only decodes with it; Matrix-Game "
                         f"encodes with the full Wan2.2 VAE); give {give('vae_type', 'wan', cli)} for image-to-video")
    if vae_pruning is None:
        return
    if vae_type == "wan":
        raise ValueError(f"{said('vae_pruning', vae_pruning, cli)} sets the width of a randomly initialised "
                         f"MG-LightVAE: give it with {give('vae_type', 'mg_lightvae', cli)} (rate 0 is the full "
                         f"Wan2.2 VAE through the same code), or drop {flag('vae_pruning', cli)}")
    check_rate(vae_pruning, said("vae_pruning", vae_pruning, cli))
    if checkpoint:
        raise ValueError(f"{said('vae_pruning', vae_pruning, cli)} applies to random weights only: a checkpoint's "
                         f"rate is read off the file (decoder.conv_in's width); drop {flag('vae_pruning', cli)}, or "
                         f"run on random weights ({flag('random_weights', cli)}) without a VAE file")


GATE_KINDS = {
    "ratio_min": "value / the reference's ≥ limit (e.g. vbench_total ≥ 0.99 × the reference's)",
    "max": "value ≤ limit (absolute)",
    "min": "value ≥ limit (absolute)",
    "within": "|value − the reference's| ≤ limit",
    "within_spread": "|mean over the configuration's seeds − the reference's mean| ≤ limit × the reference's "
                     "seed-to-seed spread (max − min)",
    "max_ratio_of": "value ≤ limit × the value of the `baseline` row",
}
"""Check kinds of a quality gate (`gates` of an experiment; judged by longlive.report.gates) and what each checks."""
REFERENCE_KINDS = ("ratio_min", "within", "within_spread")
"""Kinds that compare a row with its gate's `reference` row(s)."""
GATE_KEYS = ("name", "family", "reference", "match", "checks")
CHECK_KEYS = ("metric", "kind", "value", "baseline")
DEFAULT_GATE_MATCH = ("model", "frames", "gpu_name", "steps")
"""Columns a row shares with its reference (and baseline) row when a gate gives no `match` (those in the table)."""


def _is_scalar(v: object) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _check_selector(where: str, sel: object, *, lists: bool, nulls: bool, fix: str) -> None:
    """A {column: value} selector: string keys, scalar values (a list of them where `lists`; null where `nulls`)."""
    if not isinstance(sel, Mapping):
        raise ValueError(f"{where}={sel!r} must be a mapping of column → value: {fix}")
    for k, v in sel.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"{where} has the key {k!r}: keys are result columns (model, precision, steps, ...)")
        ok = (_is_scalar(v) and (nulls or v is not None)) or (
            lists and isinstance(v, Sequence) and not isinstance(v, str) and all(_is_scalar(x) for x in v))
        if not ok:
            allowed = "a value" + (" or a list of values" if lists else "") + (" or null (the row's own)" if nulls
                                                                                else "")
            raise ValueError(f"{where}.{k}={v!r} must be {allowed}: {fix}")


def _check_one_gate(i: int, gate: object, names: set[str]) -> None:
    if not isinstance(gate, Mapping):
        raise ValueError(f"gates[{i}]={gate!r} must be a mapping with keys {', '.join(GATE_KEYS)}: e.g. "
                         "{name: fidelity, family: {workload: infer}, reference: {precision: bf16}, checks: "
                         "[{metric: latent_rel_err_vs_ref, kind: max, value: 0.05}]}")
    name = gate.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"gates[{i}] has no name (got name={name!r}): give each gate a name, e.g. name: fidelity")
    at = f"gate {name!r} (gates[{i}])"
    if name in names:
        raise ValueError(f"{at}: another gate has the name {name!r}: give each gate of an experiment its own name")
    names.add(name)
    unknown = [k for k in gate if k not in GATE_KEYS]
    if unknown:
        raise ValueError(f"{at}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; a "
                         f"gate has {', '.join(GATE_KEYS)}")
    _check_selector(f"{at}: family", gate.get("family") or {}, lists=True, nulls=False,
                    fix="which rows the gate judges, e.g. family: {workload: infer, precision: [fp8, nvfp4]}")
    reference = gate.get("reference")
    if reference is not None:
        _check_selector(f"{at}: reference", reference, lists=False, nulls=True,
                        fix="the reference row's values, null for the judged row's own, e.g. reference: "
                            "{precision: bf16, steps: null}")
    match = gate.get("match")
    if match is not None and (isinstance(match, str) or not isinstance(match, Sequence)
                              or not all(isinstance(c, str) and c for c in match)):
        raise ValueError(f"{at}: match={match!r} must be a list of columns a row shares with its reference, e.g. "
                         f"match: [{', '.join(DEFAULT_GATE_MATCH)}] (the default)")
    checks = gate.get("checks")
    if isinstance(checks, str) or not isinstance(checks, Sequence) or not checks:
        raise ValueError(f"{at}: checks={checks!r} must be a non-empty list of {{metric, kind, value}}, e.g. checks: "
                         "[{metric: psnr_vs_ref, kind: min, value: 30}]")
    for j, check in enumerate(checks):
        _check_one_check(f"{at}: checks[{j}]", check, has_reference=bool(reference))


def _check_one_check(at: str, check: object, has_reference: bool) -> None:
    kinds = ", ".join(GATE_KINDS)
    if not isinstance(check, Mapping):
        raise ValueError(f"{at}={check!r} must be a mapping {{metric, kind, value}}, e.g. "
                         "{metric: psnr_vs_ref, kind: min, value: 30}")
    metric, kind, value = check.get("metric"), check.get("kind"), check.get("value")
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"{at} has no metric (got metric={metric!r}): give the result column it checks, e.g. "
                         "metric: latent_rel_err_vs_ref")
    at = f"{at} ({metric})"
    unknown = [k for k in check if k not in CHECK_KEYS]
    if unknown:
        raise ValueError(f"{at}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; a "
                         f"check has metric, kind, value (and baseline, for max_ratio_of)")
    if kind not in GATE_KINDS:
        raise ValueError(f"{at}: kind={kind!r} is not a check kind; choose one of {kinds}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{at}: value={value!r} must be a finite number (the {kind} limit: "
                         f"{GATE_KINDS[kind]})")
    if kind in ("within", "within_spread") and value < 0:
        raise ValueError(f"{at}: value={value!r} is an allowance of {kind}: give a number ≥ 0")
    if kind in ("ratio_min", "max_ratio_of") and value <= 0:
        raise ValueError(f"{at}: value={value!r} is a factor of {kind}: give a number > 0")
    if kind in REFERENCE_KINDS and not has_reference:
        raise ValueError(f"{at}: kind {kind} compares with the gate's reference row, and the gate has none: add "
                         "reference: {column: value, ...} to the gate (e.g. {precision: bf16, steps: null})")
    baseline = check.get("baseline")
    if kind == "max_ratio_of":
        if not baseline:
            raise ValueError(f"{at}: kind max_ratio_of needs baseline: {{column: value, ...}}, the row whose "
                             f"{metric} the limit multiplies (e.g. baseline: {{precision: fp8, attn: cudnn}})")
        _check_selector(f"{at}: baseline", baseline, lists=False, nulls=True,
                        fix="the baseline row's values, null for the judged row's own")
    elif baseline is not None:
        raise ValueError(f"{at}: baseline is read only by kind max_ratio_of (this check is {kind}): drop it")


def check_gates(gates: object) -> None:
    """An experiment's `gates` (quality gates, judged when rows are read by longlive.report.gates): each gate a
    mapping with a unique name, a family selector, a reference selector, match columns and a list of checks of a
    known kind with a numeric limit. Checked when the sweep is composed, so a typo stops it before any cell runs."""
    if gates is None:
        return
    if isinstance(gates, str | Mapping) or not isinstance(gates, Sequence):
        raise ValueError(f"gates={gates!r} must be a list of gates: gates: [{{name: ..., checks: [...]}}]")
    names: set[str] = set()
    for i, gate in enumerate(gates):
        _check_one_gate(i, gate, names)
