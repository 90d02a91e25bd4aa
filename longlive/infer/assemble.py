"""The one assembler: `build(request) -> Pipeline`, then `run(pipeline, out) -> VideoResult`.

`build` applies the transforms to plain PyTorch modules from outside, always in this order (docs/architecture.md,
"Transform order"):

    load (generator weights; a packed NVFP4 checkpoint stays packed) → LoRA merge (`lora`: W + (alpha/rank)·B·A
    into the loaded Linears) → fuse q/k/v → quantise (PTQ of the block
    Linears) → runtime LoRA (`lora_mode=runtime`: the adapter stays separate, over plain or quantised Linears)
    → KV storage (chosen by name, allocated per generation) → SP (an attention override + frame range)
    → calibrate (act_scale=static: FP8 activation scales observed on a short eager run, then frozen)
    → compile (per block, warmed over every window length) → decoder (VAE layout, compile, warm-up)

Build once, run many: `build(request, texts=...)` also embeds every text later videos use, and `for_request` aims
the assembled pipeline at another video (prompts, seed, frames) with a fresh decoder (`longlive.infer.batch`).

`longlive lora merge` writes the same merge into a checkpoint once. `generate`, `fidelity`, the
`infer`/`quality` workloads and the tiny default's evaluation all build through here, so a sweep cell and a CLI run
of the same spec do exactly the same work.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

import longlive.quant.attention  # noqa: F401  (registers the low-precision attention backends by name)
from longlive.infer.compile import compile_and_warm, compile_vae
from longlive.infer.decode import Decoder, make_decoder, switch_latencies
from longlive.infer.pipeline import GenerationSpec, generate, video_frames
from longlive.infer.training_weights import is_training_checkpoint, load_training_weights, read_checkpoint
from longlive.infer.video import VideoRequest, check_vae, vae_paths, validate
from longlive.measure.memory import peaks, reset_peaks
from longlive.model.attention import resolve_backend
from longlive.model.checkpoint import NVFP4_FORMAT, checkpoint_format, load_generator
from longlive.model.dit import build_model
from longlive.model.fuse import fuse_qkv
from longlive.model.presets import ModelConfig
from longlive.output import atomic_path, write_frame_strip, write_mp4
from longlive.parallel.groups import init_parallel
from longlive.parallel.sp_infer import SPContext
from longlive.quant.linear import ACT_SCALE_MARGIN, LinearQuantConfig
from longlive.quant.recipes import (
    act_saturation,
    attach_lora,
    freeze_act_scales,
    load_lora,
    load_nvfp4_model,
    lora_scale,
    merge_lora,
    model_weight_bytes,
    observing_act_amax,
    quantize_model,
    reset_act_saturation,
)
from longlive.text import EmbeddingCache
from longlive.vae import lightvae_for
from longlive.weights import describe, load_text_for, load_vae_for

E2E_DEFINITION = ("e2e_fps: video frames / wall time from the first chunk's noise to the last decoded frame in "
                  "host memory (load, text encoding, the compile warm-up and the VAE's warm-up excluded, reported as "
                  "load_s / text_encode_s / compile_s / vae_warmup_s; act_scale=static: its calibration run too, "
                  "act_scale_calibration_s); with decode=none, to the last latent chunk on the device (no VAE)")
GUIDANCE_DEFINITION = ("guidance_scale != 1 ran classifier-free guidance: each denoising step and each clean re-run is "
                       "two forwards (the chunk's text and the negative prompt, each against its own KV cache), so "
                       "denoise_fps, e2e_fps and kv_cache_gb include both branches; forwards_per_chunk = (steps + 1) "
                       "x 2 then, steps + 1 at guidance_scale 1")
SWITCH_LATENCY_DEFINITION = (
    "switch_latency_s: for each prompt switch of the video (a chunk after the first whose prompt differs from the "
    "chunk before's, or that opens a shot: infer.pipeline.prompt_switches over the per-chunk texts), the seconds from "
    "the moment the new prompt is submitted - time.perf_counter when the chunk loop starts that chunk, after the "
    "generator's device stream has finished the chunk before - to the moment that chunk's first decoded frame is in "
    "host memory (the decoder's land time for the chunk, after the device-to-host copy has synchronised); the median "
    "over the switches, each in switch_latency_s_per_switch in chunk order. Per decode mode: batch decodes the whole "
    "video after the last chunk, so its latency includes every later chunk; streaming (and tiles, over the SP ranks) "
    "decodes each chunk in the loop before the next starts; async and device decode on a worker thread (own CUDA "
    "stream), overlapping the next chunks. None with decode=none or without a switch")
ACT_SCALE_DEFINITION = (
    "act_scale=static: each FP8 block Linear quantises its input with one frozen per-tensor scale = amax x "
    "act_scale_margin / 448, amax = max |x| it saw over a calibration run of act_scale_calibration_chunks chunks "
    "(act_scale_calibration_forwards model forwards: the request's steps, guidance and first prompt, seed + 1, eager, "
    "dynamic scales meanwhile; every conditioning text also through the text K/V Linears); the SP ranks share the "
    "maximum. act_scale_saturated: share of the timed run's statically quantised activation elements with "
    "|x / scale| > 448 (clamped), counted on the device in eager mode; None under torch.compile, where counting "
    "would add back a reduction over every activation")


@dataclass
class Pipeline:
    """Everything one generation needs, assembled: modules on their devices, prompts embedded, decoder warm."""

    request: VideoRequest
    config: ModelConfig
    model: nn.Module
    vae: nn.Module | None
    embeds: list[torch.Tensor]
    spec: GenerationSpec
    decoder: Decoder | None          # None: decode=none, or an SP rank other than the first
    sp: SPContext | None = None
    is_main: bool = True
    image_latent: torch.Tensor | None = None
    # what the block Linears really are: a packed NVFP4 checkpoint makes them nvfp4 whatever the precision said
    linear_quant: str = "none"
    linear_quant_source: str | None = None  # "checkpoint" (packed NVFP4 file) | "ptq" | None
    linear_backend: str | None = None
    weight_rule: str | None = None          # the NVFP4 weight rule of PTQ (None: none applied, or from the file)
    act_scale_calibration: dict[str, Any] = field(default_factory=dict)  # act_scale=static: its row columns
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float | None] = field(default_factory=dict)  # load_s, text_encode_s, compile_s, vae_warmup_s
    text_table: dict[str, torch.Tensor] | None = None  # host embeddings of later videos' texts (`build(texts=...)`)


@dataclass
class VideoResult:
    """What one generation measured and wrote. `metrics` holds result-row columns only (how the Linears ran, speed,
    memory); the rest rides beside."""

    metrics: dict[str, Any]
    timing_definition: dict[str, str]
    artifacts: dict[str, str]                # name -> file name inside the output folder
    video: torch.Tensor | None               # uint8 [T, H, W, 3] of the first sample (None: decode=none)
    latents: torch.Tensor                    # float32 [B, C, F, H, W] on the host
    chunk_ms: list[float]
    windows: list[list[int]]
    notes: list[str]
    is_main: bool = True                     # False on SP ranks other than the first (nothing written there)


def load_generator_for(req: VideoRequest, cfg: ModelConfig, paths,
                       dev: torch.device) -> tuple[nn.Module, str | None, list[str]]:
    """Build the DiT and load its weights (transform 1). A packed NVFP4 checkpoint (the release's model_4o6.pt) is
    loaded packed: its Linears are already quantised, so the PTQ transform is skipped (returned source
    the backend it was loaded with; else None)."""
    notes: list[str] = []
    gen_path = req.checkpoint or (paths.generator if paths else None)
    if req.checkpoint is None and req.steps == 2 and paths is not None and paths.generator_2step is not None \
            and paths.generator_2step.exists():
        gen_path = paths.generator_2step  # the tiny default's 2-step generator (its DMD LoRA merged)
    found = gen_path is not None and Path(gen_path).exists()
    # Random weights are drawn as BF16 values, as a published checkpoint stores them, so every precision (fp32
    # included: the fidelity reference) runs the same weights.
    init_dtype = req.torch_dtype if found else torch.bfloat16
    model = build_model(cfg, device=dev, dtype=init_dtype, seed=req.seed).to(req.torch_dtype)
    model = model.eval().requires_grad_(False)
    if found:
        if req.ema or is_training_checkpoint(read_checkpoint(gen_path)):  # a training run's step_*.pt, or --ema
            notes.append(load_training_weights(model, gen_path, ema=req.ema))
            return model, None, notes
        if checkpoint_format(gen_path) == NVFP4_FORMAT:
            backend = req.linear_backend if req.linear_quant == "nvfp4" else "emulated"
            load_nvfp4_model(model, gen_path, backend=backend, act_quant=req.act_quant, act_rule=req.act_rule)
            notes.append(f"generator: NVFP4 checkpoint loaded packed ({backend} backend)")
            return model, backend, notes
        load_generator(model, gen_path)
        notes.append(f"generator: {describe(gen_path)}")
    elif req.checkpoint is not None:
        raise FileNotFoundError(f"generator checkpoint not found: expected {req.checkpoint}")
    else:
        notes.append("generator: seeded random weights (no trained checkpoint found)")
    return model, None, notes


def apply_lora(model: nn.Module, path: Path, *, packed: bool) -> str:
    """Merge the file's generator adapter into the loaded Linears at its alpha/rank scale (the merge `longlive lora
    merge` writes into a checkpoint); returns a note."""
    if packed:
        raise ValueError(f"--lora {path}: the generator checkpoint is packed NVFP4, whose Linears cannot take a merge; "
                         f"merge into the BF16 checkpoint (`longlive lora merge`) and quantise after")
    payload = load_lora(path)
    scale = lora_scale(payload)
    merged = merge_lora(model, payload["generator_lora"], scale=scale, source=f"--lora {path}")
    if not merged:
        raise ValueError(f"{path}: its generator adapter holds no LoRA pairs")
    return f"generator: LoRA {path} merged into {len(merged)} Linears (scale {scale:g})"


def apply_runtime_lora(model: nn.Module, path: Path) -> str:
    """Keep the file's generator adapter separate (`lora_mode=runtime`): each named Linear, plain or quantised,
    becomes base(x) + scale·B(A(x)); returns a note."""
    payload = load_lora(path)
    scale = lora_scale(payload)
    wrapped = attach_lora(model, payload["generator_lora"], scale=scale, source=f"--lora {path}")
    if not wrapped:
        raise ValueError(f"{path}: its generator adapter holds no LoRA pairs")
    return f"generator: LoRA {path} kept at runtime on {len(wrapped)} Linears (scale {scale:g})"


def quantise(model: nn.Module, req: VideoRequest, dev: torch.device) -> str:
    """PTQ of the block Linears to req.linear_quant (transform 3); returns a note."""
    qcfg = LinearQuantConfig(fmt=req.linear_quant, backend=req.linear_backend, weight_rule=req.weight_rule,
                             act_quant=req.act_quant, act_rule=req.act_rule, act_scale=req.act_scale)
    rep = quantize_model(model, qcfg, exclude=req.quant_exclude, device=dev)
    return (f"PTQ: {len(rep.quantised)} block Linears -> {req.linear_quant} ({req.linear_backend} backend), "
            f"{rep.bytes_before / 1e9:.2f} -> {rep.bytes_after / 1e9:.2f} GB")


def load_vae(req: VideoRequest, cfg: ModelConfig, paths) -> tuple[nn.Module, str | None]:
    """The preset's VAE, or the MG-LightVAE of `vae_type` (its file's rate; `vae_pruning` on random weights), on its
    device; on CUDA channels-last with cuDNN's algorithm search (reports/perf: 1227 → 1071 ms per steady 32-frame
    chunk), and compiled RMSNorm+SiLU when the DiT compiles too."""
    check_vae(req, cfg)
    vae_dev = torch.device(req.vae_device or req.device)
    vae_dtype = req.torch_dtype if vae_dev.type == "cuda" else torch.float32
    paths = vae_paths(req, paths)
    path = req.vae or (paths.vae if paths else None)
    if req.vae_type == "wan":
        vae, note = load_vae_for(cfg, path, explicit=req.vae is not None, device=vae_dev, dtype=vae_dtype,
                                 seed=req.seed)
    else:
        vae, note = lightvae_for(req.vae_type, path, pruning=req.vae_pruning, explicit=req.vae is not None,
                                 device=vae_dev, dtype=vae_dtype, seed=req.seed)
    if vae_dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # process-wide: the VAE's 3-D convs are the only convs that run
        vae.to_channels_last()
        if req.compile != "none" and hasattr(vae, "decoder"):
            compile_vae(vae)
    return vae, note


def calibrate_act_scale(model: nn.Module, req: VideoRequest, cfg: ModelConfig, embeds: list[torch.Tensor],
                        sp: SPContext | None) -> dict[str, Any]:
    """act_scale=static (transform 5b, before compile): observe every static FP8 Linear's max |x| over a short eager
    generation, then freeze the scales (ACT_SCALE_DEFINITION). The run: window/chunk + 1 chunks, so every window
    length is met, at the request's steps and guidance, on its first prompt with seed + 1 (not the timed run's
    noise); the other conditioning texts go through the text K/V projections. Returns the row columns."""
    t0 = time.perf_counter()
    full = generation_spec(req, cfg)
    chunks = cfg.window_frames // cfg.chunk_frames + 1
    spec = dataclasses.replace(full, prompts=full.prompts[:1], switch_chunks=None, chunk_texts=None,
                               frames=chunks * cfg.chunk_frames, seed=(req.seed + 1) % 2**63, warmup_chunks=0)
    texts = full.texts
    with observing_act_amax(model):
        generate(model, spec, [embeds[texts.index(t)] for t in spec.texts], sp=sp)
        for t, e in zip(texts, embeds, strict=True):
            if t not in spec.texts:
                model.text_kv(e)
    freeze_act_scales(model, ACT_SCALE_MARGIN, group=sp.group if sp is not None else None)
    return {"act_scale_margin": ACT_SCALE_MARGIN, "act_scale_calibration_chunks": chunks,
            "act_scale_calibration_forwards": chunks * (req.steps + 1) * (2 if spec.guided else 1),
            "act_scale_calibration_s": time.perf_counter() - t0}


def embed_prompts(req: VideoRequest, text, cfg: ModelConfig) -> list[torch.Tensor]:
    """One embedding per conditioning text (`GenerationSpec.texts`: the prompts, then the bare captions of scene
    cuts, then the negative prompt when guided), all through the same encoder and cache; seeded random embeddings
    without a text encoder (random weights)."""
    dev, dtype = torch.device(req.device), req.torch_dtype
    texts = generation_spec(req, cfg).texts
    if text is None:
        g = torch.Generator().manual_seed(req.seed)
        return [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev, dtype) for _ in texts]
    embs = EmbeddingCache(req.cache_dir).encode(text, texts)
    return [embs[i : i + 1].to(dev, dtype) for i in range(len(texts))]


def image_latent(path: Path, vae, cfg: ModelConfig) -> torch.Tensor:
    img = Image.open(path).convert("RGB").resize((cfg.width, cfg.height), Image.BICUBIC)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(cfg.height, cfg.width, 3)
    x = x.permute(2, 0, 1).float().div(127.5).sub(1.0)[None, :, None]  # [1, 3, 1, H, W]
    return vae.encode(x.to(vae.device, vae.dtype)).float()


def generation_spec(req: VideoRequest, cfg: ModelConfig) -> GenerationSpec:
    slots = cfg.window_frames // cfg.chunk_frames
    return GenerationSpec(prompts=req.prompts, frames=req.frames, steps=req.steps, seed=req.seed,
                          switch_chunks=req.switch_at, multishot_sink=req.multishot_sink,
                          clean_recache_at_cut=req.clean_recache,
                          warmup_chunks=slots - 1 if req.warmup_chunks is None else req.warmup_chunks,
                          kv_quant=req.kv_quant, timestep_shift=req.timestep_shift, guidance_scale=req.guidance_scale,
                          negative_prompt=req.negative_prompt, scene_cut_prefix=req.scene_cut_prefix,
                          kv_rule=req.kv_rule, relative_rope=req.relative_rope)


def text_table(req: VideoRequest, text, texts: list[str]) -> dict[str, torch.Tensor] | None:
    """Host embeddings of `texts` through the build's encoder and cache, for the videos `for_request` serves later
    (None without an encoder: random weights draw each video's embeddings from its seed)."""
    if text is None:
        return None
    texts = list(dict.fromkeys(texts))
    embs = EmbeddingCache(req.cache_dir).encode(text, texts, device="cpu")
    return {t: embs[i : i + 1] for i, t in enumerate(texts)}


def warm_decoder(req: VideoRequest, vae: nn.Module | None, cfg: ModelConfig, sp_ctx: SPContext | None,
                 is_main: bool) -> tuple[Decoder | None, float | None]:
    """The request's decoder (None: decode=none, or a rank that does not decode) and its warm-up seconds."""
    if req.decode == "tiles":  # every SP rank decodes its tile; the frames land on the first
        decoder = make_decoder("tiles", vae, group=sp_ctx.group)
    else:
        decoder = make_decoder(req.decode, vae, device=req.vae_device) if is_main and req.decode != "none" else None
    h, w = cfg.latent_hw
    return decoder, decoder.warm_up((1, cfg.in_channels, cfg.chunk_frames, h, w)) if decoder is not None else None


PER_VIDEO = ("prompts", "seed", "switch_at", "frames", "progress", "save_latents")
"""The request fields a pipeline assembled once may change from one video to the next (`for_request`)."""


def for_request(p: Pipeline, req: VideoRequest) -> Pipeline:
    """`p`, assembled once, aimed at another video (build once, run many): only the `PER_VIDEO` fields may differ;
    weights, transforms, devices and decode mode are the build's. Embeddings come from the build's text table, the
    decoder is a fresh one (a decoder serves one video), warmed up."""
    base = p.request
    differ = [f.name for f in dataclasses.fields(req)
              if f.name not in PER_VIDEO and getattr(req, f.name) != getattr(base, f.name)]
    if differ:
        raise ValueError(f"a pipeline assembled once serves videos differing only in {', '.join(PER_VIDEO)}; this "
                         f"request also differs in {', '.join(differ)}")
    cfg = p.config
    if req.frames <= 0 or req.frames % cfg.chunk_frames:
        raise ValueError(f"frames={req.frames} is not a multiple of the {cfg.name} chunk of {cfg.chunk_frames}")
    spec = generation_spec(req, cfg)
    spec.plan(req.frames // cfg.chunk_frames)  # prompt / switch errors now, not mid-video
    dev = torch.device(req.device)
    if p.text_table is None and req.random_weights and cfg.text_encoder != "tiny":
        embeds = embed_prompts(req, None, cfg)
    else:
        missing = [t for t in spec.texts if p.text_table is None or t not in p.text_table]
        if missing:
            raise ValueError(f"texts {missing[:3]} were not embedded at build: pass every video's texts to "
                             f"build(texts=...)")
        embeds = [p.text_table[t].to(dev, req.torch_dtype) for t in spec.texts]
    decoder, warm_s = warm_decoder(req, p.vae, cfg, p.sp, p.is_main)
    timings = {"load_s": None, "text_encode_s": None, "compile_s": None, "vae_warmup_s": warm_s}
    calibration = ({**p.act_scale_calibration, "act_scale_calibration_s": None}  # calibrated once, at build
                   if p.act_scale_calibration else {})
    notes = [*p.notes, "assembled once for several videos: load_s, text_encode_s and compile_s are in the row of the "
                       "first video this command generated"]
    return dataclasses.replace(p, request=req, embeds=embeds, spec=spec, decoder=decoder, timings=timings,
                               notes=notes, act_scale_calibration=calibration)


def build(req: VideoRequest, texts: list[str] | None = None) -> Pipeline:
    """Validate cheaply, then assemble in the documented transform order (module docstring). `texts`: every text
    later videos will be conditioned on (`for_request`), embedded now with the same encoder."""
    cfg, paths = validate(req)
    sp_ctx, is_main = None, True
    if req.sp > 1:  # SP: this process is one rank of torchrun's group
        dims = init_parallel(req.sp, device=None if torch.device(req.device).type == "cuda" else "cpu")
        req = dataclasses.replace(req, device=str(dims.device), vae_device=req.vae_device if dims.is_main else None,
                                  progress=req.progress and dims.is_main)
        sp_ctx = SPContext(dims.sp_group, dims.sp_rank, dims.sp, exchange=req.exchange)
        is_main = dims.is_main
    dev = torch.device(req.device)
    t0 = time.perf_counter()
    model, packed_backend, notes = load_generator_for(req, cfg, paths, dev)  # 1. load
    if req.lora is not None and req.lora_mode == "merge":                     # 1b. LoRA merge
        notes.append(apply_lora(model, req.lora, packed=packed_backend is not None))
    if req.fuse_qkv:                                                          # 2. fuse (before quantising)
        fuse_qkv(model)
    linear = {"linear_quant": req.linear_quant, "linear_quant_source": None, "linear_backend": None,
              "weight_rule": None}
    if packed_backend is not None:
        linear.update(linear_quant="nvfp4", linear_quant_source="checkpoint", linear_backend=packed_backend)
    elif req.linear_quant != "none":                                          # 3. quantise
        notes.append(quantise(model, req, dev))
        linear.update(linear_quant_source="ptq", linear_backend=req.linear_backend,
                      weight_rule=req.weight_rule if req.linear_quant == "nvfp4" else None)
    if req.lora is not None and req.lora_mode == "runtime":                   # 3b. LoRA kept separate
        notes.append(apply_runtime_lora(model, req.lora))
    model.attn_backend = resolve_backend(req.attn, dev, req.torch_dtype)
    spec = generation_spec(req, cfg)                                       # 4. KV storage: spec.kv_quant
    needs_vae = req.decode != "none" or req.image is not None
    vae, note = load_vae(req, cfg, paths) if needs_vae else (None, None)
    notes += [note] if note else []
    text, note = load_text_for(cfg, req.text_encoder or (paths.text if paths else None),
                               req.tokenizer or (paths.tokenizer if paths else None), device=dev, seed=req.seed,
                               random_weights=req.random_weights)
    notes += [note] if note else []
    timings: dict[str, float | None] = {"load_s": time.perf_counter() - t0}
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    t0 = time.perf_counter()
    embeds = embed_prompts(req, text, cfg)
    table = text_table(req, text, texts) if texts is not None else None
    timings["text_encode_s"] = time.perf_counter() - t0
    # 5. SP: sp_ctx goes into every forward; 5b. static FP8 activation scales, calibrated eagerly before compiling;
    # 6. compile (every rank: the calibration and the warm-up run the all-to-alls)
    calibration = calibrate_act_scale(model, req, cfg, embeds, sp_ctx) if req.act_scale == "static" else {}
    timings["compile_s"] = compile_and_warm(model, req.compile, embeds, kv_quant=spec.kv_quant, sp=sp_ctx,
                                            seed=req.seed, relative_rope=spec.relative_rope)
    img = image_latent(req.image, vae, cfg) if req.image is not None else None
    decoder, timings["vae_warmup_s"] = warm_decoder(req, vae, cfg, sp_ctx, is_main)  # 7. decoder, warm
    return Pipeline(request=req, config=cfg, model=model, vae=vae, embeds=embeds, spec=spec, decoder=decoder,
                    sp=sp_ctx, is_main=is_main, image_latent=img, notes=notes, timings=timings, text_table=table,
                    act_scale_calibration=calibration, **linear)


def write_video(frames: torch.Tensor, out: Path, fps: int) -> dict[str, str]:
    """video.mp4 and strip.png of uint8 frames [T, H, W, 3] in `out` (generation and `longlive decode` alike);
    returns the artifacts."""
    out.mkdir(parents=True, exist_ok=True)
    write_mp4(frames, out / "video.mp4", fps=fps)
    write_frame_strip(frames, out / "strip.png", num=8)
    return {"video": "video.mp4", "strip": "strip.png"}


ACT_SCALE_COLUMNS = ("act_scale_margin", "act_scale_calibration_chunks", "act_scale_calibration_forwards",
                     "act_scale_calibration_s")
"""The calibration's row columns (None unless act_scale=static); act_scale_saturated comes from the timed run."""


def option_columns(p: Pipeline) -> dict[str, Any]:
    """Row columns of the size, weight and quantisation-rule options, as they ran: a rule or filter that did not
    apply (no NVFP4 activations, no NVFP4 KV cache, no PTQ) is None, not its default."""
    req, cfg = p.request, p.config
    ptq = p.linear_quant_source == "ptq"
    return {"height": cfg.height, "width": cfg.width, "lora_mode": req.lora_mode if req.lora is not None else None,
            "ema": req.ema, "act_rule": req.act_rule if p.linear_quant == "nvfp4" and req.act_quant else None,
            "quant_exclude": list(req.quant_exclude) if ptq else None,
            "kv_rule": req.kv_rule if req.kv_quant == "nvfp4" else None,
            "act_scale": req.act_scale if ptq and p.linear_quant == "fp8" and req.act_quant else None,
            **{k: p.act_scale_calibration.get(k) for k in ACT_SCALE_COLUMNS}, **vae_columns(req.vae_type, p.vae)}


def vae_columns(vae_type: str, vae: nn.Module | None) -> dict[str, Any]:
    """Row columns of the decoder: vae_type, and vae_pruning, the rate of the MG-LightVAE that ran (read off its
    file, or the random one's; None for vae_type wan, or without a VAE)."""
    config = getattr(vae, "config", None)
    return {"vae_type": vae_type, "vae_pruning": config.pruning if vae_type != "wan" and config is not None else None}


def switch_columns(submitted: dict[int, float], dec: Decoder | None) -> dict[str, Any]:
    """switch_latency_s (median over the video's prompt switches) and switch_latency_s_per_switch (chunk order), from
    the switch chunks' submit times and a finished decoder's land times (SWITCH_LATENCY_DEFINITION); None for both
    without a decoder or a switch."""
    per_switch = switch_latencies(submitted, dec.land_times) if dec is not None and submitted else []
    return {"switch_latency_s": statistics.median(per_switch) if per_switch else None,
            "switch_latency_s_per_switch": per_switch or None}


def run(p: Pipeline, out: Path) -> VideoResult:
    """Generate (and decode) one video; on the first rank write video.mp4, strip.png[, latents.safetensors] to
    `out`. Speed, memory and KV-cache columns land in `VideoResult.metrics`."""
    req, cfg, dev = p.request, p.config, torch.device(p.request.device)
    n_chunks = req.frames // cfg.chunk_frames
    bar = tqdm(total=n_chunks, desc=f"{cfg.name} {req.steps}-step", unit="chunk", disable=not req.progress,
               file=sys.stderr)

    def on_progress(c: int, n: int, ms: float) -> None:
        bar.set_postfix_str(f"chunk {c + 1}/{n} {ms:.0f} ms")
        bar.update(1)

    dec = p.decoder
    static = bool(p.act_scale_calibration)
    if static:
        reset_act_saturation(p.model)  # count what the timed run saturates (eager only: ACT_SCALE_DEFINITION)
    reset_peaks(dev)
    t_start = time.perf_counter()
    # With a decode thread in this process, the generator waits for its device after each step instead of blocking
    # in a full launch queue while holding the GIL, which starves the decoder (reports/perf, E2E notes).
    threaded = dec is not None and dec.mode in ("async", "device") and dev.type == "cuda"
    res = generate(p.model, p.spec, p.embeds, image_latent=p.image_latent, sp=p.sp, on_progress=on_progress,
                   on_chunk=(lambda c, x: dec.submit(x.to(p.vae.dtype))) if dec is not None else None,
                   sync_each_step=threaded)
    bar.close()
    mem = peaks(dev)
    latents = res.latents.float().cpu()
    if not p.is_main:  # other SP ranks: their share is in rank 0's latents; rank 0 decodes and writes
        return VideoResult(metrics={}, timing_definition={}, artifacts={}, video=None, latents=latents,
                           chunk_ms=res.stats.chunk_ms, windows=res.windows, notes=p.notes, is_main=False)
    out.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, str] = {}
    frames = None
    if dec is not None:
        frames = dec.finish()[0]  # uint8 [T, H, W, 3] on the host
        e2e_s = dec.last_frame_time - t_start
        artifacts.update(write_video(frames, out, cfg.fps))
    else:
        e2e_s = time.perf_counter() - t_start  # .cpu() above waited for the device
    if req.save_latents or dec is None:
        with atomic_path(out / "latents.safetensors") as tmp:  # a full disk leaves no temp file, no half file
            save_file({"latents": latents.contiguous()}, str(tmp))
        artifacts["latents"] = "latents.safetensors"
    n_frames = video_frames(req.frames)
    switch = switch_columns(res.switch_submitted, dec)
    forwards_per_chunk = (req.steps + 1) * (2 if p.spec.guided else 1)  # steps + clean re-run, per CFG branch
    forwards = n_chunks * forwards_per_chunk
    metrics = {
        "compile": req.compile, "linear_quant": p.linear_quant, "linear_backend": p.linear_backend,
        "weight_rule": p.weight_rule, **res.stats.summary(), "e2e_s": e2e_s, "e2e_fps": n_frames / e2e_s, **switch,
        "guidance_scale": req.guidance_scale, "negative_prompt": req.negative_prompt if p.spec.guided else None,
        "forwards_per_chunk": forwards_per_chunk, "timestep_shift": req.timestep_shift,
        "window_frames": cfg.window_frames, "sink_frames": cfg.sink_frames, "shot_rope_offset": cfg.shot_rope_offset,
        "scene_cut_prefix": req.scene_cut_prefix, "relative_rope": req.relative_rope, **option_columns(p),
        **p.timings, "frames_video": n_frames,
        "video_seconds": n_frames / cfg.fps, **mem, "kv_cache_gb": res.kv_cache_bytes / 1e9,
        "kv_packed_gb": res.kv_packed_bytes / 1e9, "weights_gb": model_weight_bytes(p.model) / 1e9,
        "decode_landed_s": [round(t - t_start, 3) for t in dec.chunk_times] if dec is not None else None,
        "sp_bytes_per_forward": p.sp.stats.bytes_sent / forwards if p.sp else None,
        "sp_bytes_by_kind": {k: v / forwards for k, v in p.sp.stats.by_kind.items()} if p.sp else None,
        "act_scale_saturated": act_saturation(p.model) if static else None,
    }
    return VideoResult(metrics=metrics, artifacts=artifacts, video=frames, latents=latents,
                       timing_definition={"denoise_fps": res.stats.timing_definition, "e2e_fps": E2E_DEFINITION,
                                          "guidance_scale": GUIDANCE_DEFINITION,
                                          **({"switch_latency_s": SWITCH_LATENCY_DEFINITION}
                                             if switch["switch_latency_s"] is not None else {}),
                                          **({"act_scale": ACT_SCALE_DEFINITION} if static else {})},
                       chunk_ms=res.stats.chunk_ms, windows=res.windows, notes=p.notes)


def make_video(req: VideoRequest, out: Path) -> VideoResult:
    """build, then run: one video from a request."""
    return run(build(req), out)
