"""One video from a request: validate cheaply, load components, generate, decode, write artifacts.

Shared by `longlive generate` and the runner's `infer` workload, so a sweep cell and a CLI run of the same
config do exactly the same work.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from longlive.model.presets import ModelConfig, get_preset
from longlive.quant.linear import DEFAULT_WEIGHT_RULE

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_PROMPT = "A red ball bounces across a blue floor"
E2E_DEFINITION = ("e2e_fps: video frames / wall time from the first chunk's noise to the last decoded frame in "
                  "host memory (load, text encoding, the compile warm-up and the VAE's warm-up excluded, reported as "
                  "load_s / text_encode_s / compile_s / vae_warmup_s)")


@dataclass
class VideoRequest:
    preset: str
    frames: int
    prompts: list[str] = field(default_factory=lambda: [DEFAULT_PROMPT])
    steps: int = 4
    seed: int = 0
    switch_at: list[int] | None = None
    device: str = "cpu"
    vae_device: str | None = None
    precision: str | None = None  # the named precision the fields below come from (recorded in rows)
    dtype: str | None = None  # None: bf16 on GPU, fp32 on CPU
    attn: str = "auto"
    decode: str = "streaming"
    checkpoint: Path | None = None
    vae: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None
    random_weights: bool = False
    image: Path | None = None
    multishot_sink: bool = True
    clean_recache: bool = False
    cache_dir: Path = Path(".cache") / "prompt_embeddings"
    warmup_chunks: int | None = None  # None: until the window is full
    progress: bool = True
    save_latents: bool = False
    quant: str = "none"               # block Linears: none | fp8 | nvfp4 (PTQ at load)
    linear_backend: str = "emulated"  # emulated | fp8 | te (explicit; recorded in results)
    weight_rule: str = DEFAULT_WEIGHT_RULE  # NVFP4 weight rule (the release's 4-over-6 `mse`)
    act_quant: bool = True            # W4A4 / W8A8 (False: weight-only)
    kv_quant: str = "none"            # none | fp8 | nvfp4
    sp: int = 1                       # sequence-parallel ranks (run under torchrun; `longlive generate` does it)
    exchange: str = "none"            # SP all-to-all compression of K/V: none | fp8 | nvfp4
    compile: str = "none"             # torch.compile of the DiT blocks: none | default | max-autotune-no-cudagraphs

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            if self.dtype not in DTYPES:
                raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
            return DTYPES[self.dtype]
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32


def validate(req: VideoRequest):
    """All cheap checks before anything heavy. Returns (preset config, default weight paths or None)."""
    from longlive.infer.decode import DECODE_MODES
    from longlive.infer.pipeline import chunk_texts
    from longlive.model.attention import BACKENDS
    from longlive.weights import default_paths, require

    cfg = get_preset(req.preset)
    if req.frames <= 0 or req.frames % cfg.chunk_frames:
        raise ValueError(
            f"--frames {req.frames} is not a multiple of the {req.preset} chunk of {cfg.chunk_frames} latent frames"
        )
    if req.decode not in DECODE_MODES:
        raise ValueError(f"unknown --decode {req.decode!r}; choose one of {', '.join(DECODE_MODES)}")
    if req.attn not in BACKENDS:
        raise ValueError(f"unknown --attn {req.attn!r}; choose one of {', '.join(BACKENDS)}")
    req.torch_dtype  # noqa: B018  (validates dtype)
    for dev in filter(None, (req.device, req.vae_device)):
        d = torch.device(dev)
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise ValueError(f"device {dev} is not available on this machine")
    chunk_texts(req.prompts, req.frames // cfg.chunk_frames, req.switch_at)
    if req.sp > 1:
        import os

        from longlive.parallel.groups import check_sp
        from longlive.parallel.ulysses import COMPRESSION

        check_sp(cfg, req.sp)
        if req.exchange not in COMPRESSION:
            raise ValueError(f"unknown --exchange {req.exchange!r}; choose one of {', '.join(COMPRESSION)}")
        if int(os.environ.get("WORLD_SIZE", "1")) != req.sp:
            raise ValueError(f"sp={req.sp} runs as {req.sp} processes under torchrun (WORLD_SIZE={req.sp}); "
                             f"`longlive generate --sp {req.sp}` launches them for you")
    from longlive.infer.compile import COMPILE_MODES

    if req.compile not in COMPILE_MODES:
        raise ValueError(f"unknown --compile {req.compile!r}; choose one of {', '.join(COMPILE_MODES)}")
    if req.kv_quant not in ("none", "fp8", "nvfp4"):
        raise ValueError(f"unknown --kv-quant {req.kv_quant!r}; choose none, fp8 or nvfp4")
    if req.quant != "none":
        from longlive.quant.linear import check_backend

        check_backend(req.quant, req.linear_backend, req.device)
    if req.image is not None:
        require(req.image, "--image")
    if req.random_weights:
        return cfg, None
    paths = default_paths(cfg)
    if cfg.name == "tiny":  # our own weights are optional: seeded random ones otherwise
        return cfg, paths
    require(req.checkpoint or paths.generator, "generator checkpoint")
    require(req.vae or paths.vae, "VAE checkpoint")
    require(req.text_encoder or paths.text, "umT5 text encoder checkpoint")
    require(req.tokenizer or paths.tokenizer, "umT5 tokenizer folder")
    return cfg, paths


def load_components(req: VideoRequest, cfg: ModelConfig, paths):
    """Generator, VAE and text encoder on their devices; notes say which are untrained stand-ins."""
    from longlive.model.checkpoint import load_generator
    from longlive.model.dit import build_model
    from longlive.weights import describe, load_text_for, load_vae_for

    dev = torch.device(req.device)
    vae_dev = torch.device(req.vae_device or req.device)
    dtype = req.torch_dtype
    notes = []
    model = build_model(cfg, device=dev, dtype=dtype, seed=req.seed).eval().requires_grad_(False)
    gen_path = req.checkpoint or (paths.generator if paths else None)
    if req.checkpoint is None and req.steps == 2 and paths is not None and paths.generator_2step is not None \
            and paths.generator_2step.exists():
        gen_path = paths.generator_2step  # the tiny default's 2-step generator (its DMD LoRA merged)
    packed_checkpoint = False
    if gen_path is not None and Path(gen_path).exists():
        from longlive.model.checkpoint import NVFP4_FORMAT, checkpoint_format

        if checkpoint_format(gen_path) == NVFP4_FORMAT:  # the release's model_4o6.pt: weights stay packed
            from longlive.quant.recipes import load_nvfp4_model

            backend = req.linear_backend if req.quant == "nvfp4" else "emulated"
            load_nvfp4_model(model, gen_path, backend=backend, act_quant=req.act_quant)
            notes.append(f"generator: NVFP4 checkpoint loaded packed ({backend} backend)")
            packed_checkpoint = True
        else:
            load_generator(model, gen_path)
            notes.append(f"generator: {describe(gen_path)}")
    elif req.checkpoint is not None:
        raise FileNotFoundError(f"generator checkpoint not found: expected {req.checkpoint}")
    else:
        notes.append("generator: seeded random weights (no trained checkpoint found)")
    if req.quant != "none" and not packed_checkpoint:
        from longlive.quant.linear import LinearQuantConfig
        from longlive.quant.recipes import quantize_model

        qcfg = LinearQuantConfig(fmt=req.quant, backend=req.linear_backend, weight_rule=req.weight_rule,
                                 act_quant=req.act_quant)
        rep = quantize_model(model, qcfg, device=dev)
        notes.append(f"PTQ: {len(rep.quantised)} block Linears -> {req.quant} ({req.linear_backend} backend), "
                     f"{rep.bytes_before / 1e9:.2f} -> {rep.bytes_after / 1e9:.2f} GB")
    vae_dtype = dtype if vae_dev.type == "cuda" else torch.float32
    vae, note = load_vae_for(cfg, req.vae or (paths.vae if paths else None), explicit=req.vae is not None,
                             device=vae_dev, dtype=vae_dtype, seed=req.seed)
    notes += [note] if note else []
    if vae_dev.type == "cuda":
        # cuDNN's channels-last 3-D conv kernels with algorithm search (reports/perf: 1227 → 1071 ms per steady
        # 32-frame chunk with the stream's single layout), and the fused RMSNorm+SiLU when the DiT compiles too.
        torch.backends.cudnn.benchmark = True
        vae.to_channels_last()
        if req.compile != "none" and hasattr(vae, "decoder"):
            from longlive.infer.compile import compile_vae

            compile_vae(vae)
    text, note = load_text_for(cfg, req.text_encoder or (paths.text if paths else None),
                               req.tokenizer or (paths.tokenizer if paths else None), device=dev, seed=req.seed,
                               random_weights=req.random_weights)
    notes += [note] if note else []
    return model, vae, text, notes


def embed_prompts(req: VideoRequest, text, cfg: ModelConfig) -> list[torch.Tensor]:
    """One embedding per conditioning text (`GenerationSpec.texts`: the prompts, then the bare captions of scene
    cuts)."""
    from longlive.infer.pipeline import conditioning_texts
    from longlive.text import EmbeddingCache

    dev, dtype = torch.device(req.device), req.torch_dtype
    texts = conditioning_texts(req.prompts)
    if text is None:
        g = torch.Generator().manual_seed(req.seed)
        return [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev, dtype) for _ in texts]
    embs = EmbeddingCache(req.cache_dir).encode(text, texts)
    return [embs[i : i + 1].to(dev, dtype) for i in range(len(texts))]


def image_latent(path: Path, vae, cfg: ModelConfig) -> torch.Tensor:
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((cfg.width, cfg.height), Image.BICUBIC)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(cfg.height, cfg.width, 3)
    x = x.permute(2, 0, 1).float().div(127.5).sub(1.0)[None, :, None]  # [1, 3, 1, H, W]
    return vae.encode(x.to(vae.device, vae.dtype)).float()


def make_video(req: VideoRequest, out: Path) -> dict:
    """Generate and decode one video into `out` (video.mp4, strip.png[, latents.safetensors]).

    Returns a dict of metric columns plus `timing_definition`, `artifacts` (names relative to `out`),
    `frames`, `windows` and `notes`.
    """
    from tqdm import tqdm

    from longlive.infer.decode import make_decoder
    from longlive.infer.pipeline import GenerationSpec, generate, video_frames
    from longlive.measure.memory import peaks, reset_peaks
    from longlive.model.attention import resolve_backend
    from longlive.output import write_frame_strip, write_mp4
    from longlive.quant.recipes import model_weight_bytes

    cfg, paths = validate(req)
    sp_ctx, is_main = None, True
    if req.sp > 1:
        from longlive.parallel.groups import init_parallel
        from longlive.parallel.sp_infer import SPContext

        dims = init_parallel(req.sp, device=None if torch.device(req.device).type == "cuda" else "cpu")
        req = dataclasses.replace(req, device=str(dims.device), vae_device=req.vae_device if dims.is_main else None,
                                  progress=req.progress and dims.is_main)
        sp_ctx = SPContext(dims.sp_group, dims.sp_rank, dims.sp, compress_kv=req.exchange)
        is_main = dims.is_main
    dev = torch.device(req.device)
    slots = cfg.window_frames // cfg.chunk_frames
    spec = GenerationSpec(prompts=req.prompts, frames=req.frames, steps=req.steps, seed=req.seed,
                          switch_chunks=req.switch_at, multishot_sink=req.multishot_sink,
                          clean_recache_at_cut=req.clean_recache,
                          warmup_chunks=slots - 1 if req.warmup_chunks is None else req.warmup_chunks,
                          kv_storage=None if req.kv_quant == "none" else req.kv_quant)
    t0 = time.perf_counter()
    model, vae, text, notes = load_components(req, cfg, paths)
    model.attn_backend = resolve_backend(req.attn, dev)
    load_s = time.perf_counter() - t0
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    t0 = time.perf_counter()
    embeds = embed_prompts(req, text, cfg)
    text_encode_s = time.perf_counter() - t0
    from longlive.infer.compile import compile_and_warm

    compile_s = compile_and_warm(model, req.compile, embeds, kv_storage=spec.kv_storage, sp=sp_ctx, seed=req.seed)
    img = image_latent(req.image, vae, cfg) if req.image is not None else None

    n_chunks = req.frames // cfg.chunk_frames
    decoder = make_decoder(req.decode, vae, device=req.vae_device) if is_main else None
    h, w = cfg.latent_hw
    vae_warmup_s = decoder.warm_up((1, cfg.in_channels, cfg.chunk_frames, h, w)) if decoder is not None else None
    bar = tqdm(total=n_chunks, desc=f"{cfg.name} {req.steps}-step", unit="chunk", disable=not req.progress,
               file=sys.stderr)

    def on_progress(c: int, n: int, ms: float) -> None:
        bar.set_postfix_str(f"chunk {c + 1}/{n} {ms:.0f} ms")
        bar.update(1)

    reset_peaks(dev)
    t_start = time.perf_counter()
    # With a decode thread in this process, the generator waits for its device after each step instead of blocking
    # in a full launch queue while holding the GIL, which starves the decoder (reports/perf, E2E notes).
    threaded = decoder is not None and decoder.mode in ("async", "device") and dev.type == "cuda"
    res = generate(model, spec, embeds, image_latent=img, sp=sp_ctx, on_progress=on_progress,
                   on_chunk=(lambda c, x: decoder.submit(x.to(vae.dtype))) if decoder is not None else None,
                   sync_each_step=threaded)
    bar.close()
    mem = peaks(dev)
    if not is_main:  # other SP ranks: their share is in rank 0's latents; rank 0 decodes and writes
        return {"rank_not_main": True}
    video = decoder.finish()  # uint8 [B, T, H, W, 3] on the host
    e2e_s = decoder.last_frame_time - t_start

    out.mkdir(parents=True, exist_ok=True)
    frames = video[0]
    artifacts = {"video": "video.mp4", "strip": "strip.png"}
    write_mp4(frames, out / "video.mp4", fps=cfg.fps)
    write_frame_strip(frames, out / "strip.png", num=8)
    if req.save_latents:
        from safetensors.torch import save_file

        tmp = out / "latents.safetensors.tmp"
        save_file({"latents": res.latents.float().cpu().contiguous()}, str(tmp))
        tmp.replace(out / "latents.safetensors")
        artifacts["latents"] = "latents.safetensors"
    n_frames = video_frames(req.frames)
    return {
        **res.stats.summary(), "e2e_s": e2e_s, "e2e_fps": n_frames / e2e_s, "load_s": load_s,
        "text_encode_s": text_encode_s,
        "compile": req.compile, "compile_s": compile_s, "vae_warmup_s": vae_warmup_s, "frames_video": n_frames,
        "decode_landed_s": [round(t - t_start, 3) for t in decoder.chunk_times],
        "video_seconds": n_frames / cfg.fps, **mem,
        "kv_cache_gb": res.kv_cache_bytes / 1e9, "kv_packed_gb": res.kv_packed_bytes / 1e9,
        "weights_gb": model_weight_bytes(model) / 1e9,
        "timing_definition": {"denoise_fps": res.stats.timing_definition, "e2e_fps": E2E_DEFINITION},
        "artifacts": artifacts, "chunk_ms": res.stats.chunk_ms, "windows": res.windows, "notes": notes,
        "video_uint8": frames, "model_config": asdict(cfg),
        "sp_bytes_per_forward": (sp_ctx.stats.bytes_sent / (n_chunks * (req.steps + 1))) if sp_ctx else None,
    }
