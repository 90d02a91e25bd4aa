"""`longlive` console entry point: `generate` a video, print the `env` manifest.

Every check that can fail cheaply (preset, frame count, weight files, devices) runs before any model is
built, so bad input costs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from longlive.model.presets import PRESETS, get_preset

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_PROMPT = "A red ball bounces across a blue floor"


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video autoregressively, chunk by chunk")
    p.add_argument("--preset", required=True, help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--prompt", action="append", default=None,
                   help="repeat for multi-prompt videos; a prompt starting with 'The scene transitions. ' cuts")
    p.add_argument("--switch-at", type=int, nargs="*", default=None, metavar="CHUNK",
                   help="chunk index at which each prompt after the first begins (default: evenly spread)")
    p.add_argument("--frames", type=int, required=True, help="latent frames (a multiple of the preset's chunk)")
    p.add_argument("--steps", type=int, default=4, choices=[1, 2, 3, 4, 5, 6, 8])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output folder (video.mp4, strip.png, result.json)")
    p.add_argument("--checkpoint", type=Path, default=None, help="generator file (default: under LONGLIVE_WEIGHTS)")
    p.add_argument("--vae", type=Path, default=None, help="VAE checkpoint (default: under LONGLIVE_WEIGHTS)")
    p.add_argument("--text-encoder", type=Path, default=None, help="text encoder checkpoint")
    p.add_argument("--tokenizer", type=Path, default=None, help="umT5 tokenizer folder")
    p.add_argument("--random-weights", action="store_true",
                   help="use seeded random weights for every component (speed runs; output is noise)")
    p.add_argument("--image", type=Path, default=None, help="first frame for image-to-video")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vae-device", default=None, help="device of the VAE (decode=device: e.g. cuda:1)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--attn", default="auto", help="attention backend: auto, math, flash, cudnn, efficient")
    p.add_argument("--decode", default="streaming", help="batch, streaming, async or device")
    p.add_argument("--no-multishot-sink", action="store_true", help="do not pin the first chunk of a new shot")
    p.add_argument("--clean-recache", action="store_true", help="at a scene cut keep only the global sink")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache") / "prompt_embeddings")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_generate)


def _validate(a: argparse.Namespace):
    """All cheap checks, in order, before anything heavy happens. Returns (cfg, weight paths or None)."""
    from longlive.infer.decode import DECODE_MODES
    from longlive.model.attention import BACKENDS
    from longlive.weights import default_paths, require

    cfg = get_preset(a.preset)
    if a.frames <= 0 or a.frames % cfg.chunk_frames:
        raise ValueError(
            f"--frames {a.frames} is not a multiple of the {a.preset} chunk of {cfg.chunk_frames} latent frames"
        )
    if a.decode not in DECODE_MODES:
        raise ValueError(f"unknown --decode {a.decode!r}; choose one of {', '.join(DECODE_MODES)}")
    if a.attn not in BACKENDS:
        raise ValueError(f"unknown --attn {a.attn!r}; choose one of {', '.join(BACKENDS)}")
    for dev in filter(None, (a.device, a.vae_device)):
        d = torch.device(dev)
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise ValueError(f"device {dev} is not available on this machine")
    if a.image is not None:
        require(a.image, "--image")
    if a.random_weights:
        return cfg, None
    paths = default_paths(cfg)
    if cfg.name == "tiny":  # our own weights are optional: seeded random ones otherwise
        return cfg, paths
    require(a.checkpoint or paths.generator, "generator checkpoint")
    require(a.vae or paths.vae, "VAE checkpoint")
    require(a.text_encoder or paths.text, "umT5 text encoder checkpoint")
    require(a.tokenizer or paths.tokenizer, "umT5 tokenizer folder")
    return cfg, paths


def _load_components(a: argparse.Namespace, cfg, paths, dtype: torch.dtype):
    from longlive.model.checkpoint import load_generator
    from longlive.model.dit import build_model
    from longlive.text import build_text_encoder
    from longlive.vae import build_vae, load_vae

    dev = torch.device(a.device)
    vae_dev = torch.device(a.vae_device or a.device)
    notes = []
    model = build_model(cfg, device=dev, dtype=dtype, seed=a.seed).eval().requires_grad_(False)
    gen_path = a.checkpoint or (paths.generator if paths else None)
    if gen_path is not None and Path(gen_path).exists():
        load_generator(model, gen_path)
    elif a.checkpoint is not None:
        raise FileNotFoundError(f"generator checkpoint not found: expected {a.checkpoint}")
    else:
        notes.append("generator: seeded random weights (no trained checkpoint found)")
    vae_path = a.vae or (paths.vae if paths else None)
    vae_dtype = dtype if vae_dev.type == "cuda" else torch.float32
    if vae_path is not None and Path(vae_path).exists():
        vae = load_vae(cfg.vae, vae_path, device=vae_dev, dtype=vae_dtype)
    elif a.vae is not None:
        raise FileNotFoundError(f"VAE checkpoint not found: expected {a.vae}")
    else:
        torch.manual_seed(a.seed)
        vae = build_vae(cfg.vae, device=vae_dev, dtype=vae_dtype)
        notes.append("vae: seeded random weights (no trained checkpoint found)")
    text_path = a.text_encoder or (paths.text if paths else None)
    if cfg.text_encoder == "tiny":
        ckpt = text_path if text_path is not None and Path(text_path).exists() else None
        text = build_text_encoder("tiny", checkpoint=ckpt, device=dev, seed=a.seed if ckpt is None else None)
        if ckpt is None:
            notes.append("text encoder: seeded random tiny umT5")
    elif a.random_weights:
        text = None  # random embeddings of the right shape
        notes.append("text encoder: skipped (random prompt embeddings)")
    else:
        text = build_text_encoder(cfg.text_encoder, checkpoint=text_path,
                                  tokenizer_dir=a.tokenizer or paths.tokenizer, device=dev)
    return model, vae, text, notes


def _embed(prompts, text, cfg, a, dev, dtype) -> list[torch.Tensor]:
    from longlive.text import EmbeddingCache

    if text is None:
        g = torch.Generator().manual_seed(a.seed)
        return [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev, dtype) for _ in prompts]
    embs = EmbeddingCache(a.cache_dir).encode(text, prompts)
    return [embs[i : i + 1].to(dev, dtype) for i in range(len(prompts))]


def _image_latent(path: Path, vae, cfg) -> torch.Tensor:
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((cfg.width, cfg.height), Image.BICUBIC)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(cfg.height, cfg.width, 3)
    x = x.permute(2, 0, 1).float().div(127.5).sub(1.0)[None, :, None]  # [1, 3, 1, H, W]
    return vae.encode(x.to(vae.device, vae.dtype)).float()


def cmd_generate(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from longlive.bench.manifest import manifest
    from longlive.bench.memory import peaks, reset_peaks
    from longlive.infer.decode import make_decoder
    from longlive.infer.pipeline import GenerationSpec, generate, video_frames
    from longlive.model.attention import resolve_backend
    from longlive.output import write_frame_strip, write_mp4

    cfg, paths = _validate(a)
    prompts = a.prompt or [DEFAULT_PROMPT]
    dev = torch.device(a.device)
    dtype = DTYPES[a.dtype] if a.dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    spec = GenerationSpec(prompts=prompts, frames=a.frames, steps=a.steps, seed=a.seed, switch_chunks=a.switch_at,
                          multishot_sink=not a.no_multishot_sink, clean_recache_at_cut=a.clean_recache)
    from longlive.infer.pipeline import plan_chunks

    plan_chunks(prompts, a.frames // cfg.chunk_frames, a.switch_at)  # validate the prompt schedule early

    t0 = time.perf_counter()
    model, vae, text, notes = _load_components(a, cfg, paths, dtype)
    model.attn_backend = resolve_backend(a.attn, dev)
    load_s = time.perf_counter() - t0
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    t0 = time.perf_counter()
    embeds = _embed(prompts, text, cfg, a, dev, dtype)
    text_encode_s = time.perf_counter() - t0
    image_latent = _image_latent(a.image, vae, cfg) if a.image is not None else None

    n_chunks = a.frames // cfg.chunk_frames
    decoder = make_decoder(a.decode, vae, device=a.vae_device)
    bar = tqdm(total=n_chunks, desc=f"{cfg.name} {a.steps}-step", unit="chunk", disable=a.no_progress)

    def on_progress(c: int, n: int, ms: float) -> None:
        bar.set_postfix_str(f"chunk {c + 1}/{n} {ms:.0f} ms")
        bar.update(1)

    reset_peaks(dev)
    t_start = time.perf_counter()
    res = generate(model, spec, embeds, image_latent=image_latent,
                   on_chunk=lambda c, x: decoder.submit(x.to(vae.dtype)), on_progress=on_progress)
    video = decoder.finish()  # uint8 [B, T, H, W, 3] on the host
    e2e_s = decoder.last_frame_time - t_start
    bar.close()

    a.out.mkdir(parents=True, exist_ok=True)
    frames = video[0]
    write_mp4(frames, a.out / "video.mp4", fps=cfg.fps)
    write_frame_strip(frames, a.out / "strip.png", num=8)
    n_frames = video_frames(a.frames)
    row = {
        "preset": cfg.name, "precision": str(dtype).replace("torch.", ""), "steps": a.steps, "decode": a.decode,
        "kv_quant": "none", "sp": 1, "frames_latent": a.frames, "frames_video": n_frames,
        "timing_definition": {"denoise_fps": res.stats.timing_definition,
                              "e2e_fps": "video frames / wall time from the first chunk's noise to the last decoded "
                                         "frame in host memory (load and text encoding excluded)"},
        **res.stats.summary(), "e2e_s": e2e_s, "e2e_fps": n_frames / e2e_s, "load_s": load_s,
        "text_encode_s": text_encode_s, "chunk_ms": res.stats.chunk_ms, **peaks(dev),
        "kv_cache_gb": res.kv_cache_bytes / 1e9, "windows": res.windows, "notes": notes,
    }
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "func"}
    config["model_config"] = asdict(cfg)
    result = {"rows": [row], "manifest": manifest(config, a.seed)}
    (a.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {a.out / 'video.mp4'} ({n_frames} frames, {cfg.width}x{cfg.height}), {a.out / 'strip.png'}; "
          f"denoise {row['denoise_fps']:.1f} FPS, end to end {row['e2e_fps']:.1f} FPS ({a.decode} decode)")
    return 0


def cmd_env(a: argparse.Namespace) -> int:
    from longlive.bench.manifest import manifest

    print(json.dumps(manifest(), indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="longlive", description="Long autoregressive video generation harness")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    env = sub.add_parser("env", help="print the environment manifest")
    env.set_defaults(func=cmd_env)
    a = ap.parse_args(argv)
    try:
        return a.func(a)
    except (ValueError, FileNotFoundError) as exc:
        print(f"longlive {a.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
