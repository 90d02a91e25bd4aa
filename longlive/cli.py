"""`longlive` console entry point: `generate` a video, print the `env` manifest.

Every check that can fail cheaply (preset, frame count, weight files, devices) runs before any model is
built, so bad input costs nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from longlive.experiments import precision_config, precisions, request_fields
from longlive.experiments.rules import check_device_string
from longlive.infer.assemble import VideoResult, make_video
from longlive.infer.batch import (
    PromptEntry,
    VideoItem,
    dp_share,
    read_caption_dir,
    read_prompt_file,
    run_videos,
    video_items,
)
from longlive.infer.fidelity import compare, precision_fields
from longlive.infer.latents import decode_latents, generation_config, read_latents, write_video
from longlive.infer.video import DECODE_CHOICES, DEFAULT_PROMPT, VideoRequest, validate
from longlive.measure.manifest import manifest, version_line
from longlive.model.attention import BACKENDS
from longlive.model.presets import DEFAULT_VIDEO_SECONDS, PRESETS, default_frames, get_preset
from longlive.names import ACT_SCALE, COMPILE_MODES, EXCHANGE, KV_QUANT, LORA_MODES, VAE_TYPES
from longlive.output import OutputWriteError, check_out_dir, write_text_atomic
from longlive.parallel.groups import check_sp, init_parallel, shutdown_parallel
from longlive.quant.kv import DEFAULT_KV_RULE
from longlive.quant.linear import DEFAULT_WEIGHT_RULE
from longlive.quant.nvfp4 import RULES as NVFP4_RULES
from longlive.quant.recipes import DEFAULT_ACT_RULE
from longlive.report import add_report_parser
from longlive.report.compare_cli import add_compare_parser
from longlive.runner.executor import Interrupted, run_sweep
from longlive.runner.matrix import expand
from longlive.runner.schema import empty_row
from longlive.runner.store import ResultsStore
from longlive.text.prompts import DEFAULT_NEGATIVE_PROMPT, SCENE_CUT_PREFIX
from longlive.train.dmd_command import add_dmd_parser
from longlive.train.lora import add_lora_parser
from longlive.train.tiny import train_tiny
from longlive.train.trainer import add_train_parser
from longlive.train.trainer import cmd_train as run_trainer
from longlive.weights import weights_root


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video autoregressively, chunk by chunk")
    p.add_argument("--model", required=True, help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--prompt", action="append", default=None,
                   help="repeat for multi-prompt videos. A prompt starting with 'The scene transitions. ' (or "
                        "--scene-cut-prefix) opens a new shot (the release's convention): its first chunk is "
                        "conditioned on the prompt as written, the shot's later chunks on the bare caption. Any other "
                        "prompt switches the text within the shot")
    p.add_argument("--switch-at", type=int, nargs="*", default=None, metavar="CHUNK",
                   help="chunk index at which each prompt after the first begins (default: evenly spread)")
    defaults = ", ".join(f"{n} {default_frames(c)}" for n, c in PRESETS.items())
    p.add_argument("--frames", type=int, default=None,
                   help=f"latent frames, a multiple of the preset's chunk; T latents decode to 1 + 4(T-1) video frames "
                        f"(default: about {DEFAULT_VIDEO_SECONDS:g} s of video: {defaults})")
    p.add_argument("--steps", type=int, default=4,
                   help="denoising steps per chunk, any >= 1 (the release's inference.sampling_steps; one clean "
                        "re-run follows): UniPC over N shift-warped sigmas from 0.999 to 0")
    p.add_argument("--timestep-shift", type=float, default=5.0,
                   help="shift s of the sigma grid, s*sigma / (1 + (s-1)*sigma) (the release's timestep_shift)")
    p.add_argument("--guidance-scale", type=float, default=1.0,
                   help="classifier-free guidance v_u + g*(v_c - v_u) (the release's inference.guidance_scale; "
                        "default 1: off). Other values run two forwards per step, each branch with its own KV cache")
    p.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT,
                   help="the unconditional text when --guidance-scale is not 1 (default: the release's Chinese "
                        "negative prompt, longlive.text.prompts.DEFAULT_NEGATIVE_PROMPT)")
    p.add_argument("--window-frames", type=int, default=None,
                   help="attention window in latent frames, a multiple of the chunk (the release's local_attn_size; "
                        "default: the preset's)")
    p.add_argument("--sink-frames", type=int, default=None,
                   help="global attention sink in latent frames, 0 or a multiple of the chunk (the release's "
                        "sink_size; default: the preset's; 0: no sink and no shot pin)")
    p.add_argument("--shot-rope-offset", type=int, default=None,
                   help="temporal RoPE positions skipped at each scene cut (the release's multi_shot_rope_offset; "
                        "default: the preset's, 8)")
    p.add_argument("--scene-cut-prefix", default=SCENE_CUT_PREFIX,
                   help=f"a prompt starting with this text opens a shot (the release's scene_cut_prefix; default "
                        f"{SCENE_CUT_PREFIX!r})")
    p.add_argument("--relative-rope", action="store_true",
                   help="temporal RoPE positions count within the attention window, keys cached unrotated (the "
                        "release's use_relative_rope; no shot offset, sp 1). Default: absolute positions, which "
                        "also run past the 1024-row table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output folder (video.mp4, strip.png, result.json)")
    p.add_argument("--checkpoint", type=Path, default=None, help="generator file (default: under LONGLIVE_WEIGHTS)")
    p.add_argument("--vae", type=Path, default=None,
                   help="VAE checkpoint (default: under LONGLIVE_WEIGHTS: Wan2.2_VAE.pth, or the --vae-type's file)")
    p.add_argument("--vae-type", choices=list(VAE_TYPES), default="wan",
                   help="the decoder of a Wan2.2-VAE preset (the release's vae_type): wan, or Matrix-Game 3.0's pruned "
                        "MG-LightVAE, mg_lightvae (MG-LightVAE.pth, widths x 0.5) / mg_lightvae_v2 "
                        "(MG-LightVAE_v2.pth, x 0.25), its pruning rate read off the file; decode only (not with "
                        "--image)")
    p.add_argument("--vae-pruning", type=float, default=None,
                   help="the pruning rate of a randomly initialised MG-LightVAE (--random-weights without --vae; "
                        "default: the --vae-type's file's, 0.5 / 0.75)")
    p.add_argument("--text-encoder", type=Path, default=None, help="text encoder checkpoint")
    p.add_argument("--tokenizer", type=Path, default=None, help="umT5 tokenizer folder")
    p.add_argument("--random-weights", action="store_true",
                   help="use seeded random weights for every component (speed runs; output is noise)")
    p.add_argument("--image", type=Path, default=None, help="first frame for image-to-video")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vae-device", default=None, help="device of the VAE (decode=device: e.g. cuda:1)")
    p.add_argument("--attn", default="auto", choices=list(BACKENDS), help="attention backend")
    p.add_argument("--decode", default="streaming", choices=list(DECODE_CHOICES),
                   help="when and where latents become frames (none: latents only, no VAE; `longlive decode` turns "
                        "them into the video later)")
    p.add_argument("--precision", choices=precisions(), default=None,
                   help="a named precision, as in sweeps and `fidelity` (longlive/experiments/precision/): dtype, "
                        "block-Linear format and backend (fp8: real W8A8 GEMMs, cc >= 8.9; *-emulated / nvfp4: "
                        "dequantise + high-precision GEMM, any device; *-te: TransformerEngine). Default: bf16 on GPU, "
                        "fp32 on CPU")
    p.add_argument("--weight-rule", default=None, choices=list(NVFP4_RULES),
                   help=f"override the NVFP4 weight rule (default: the precision's, else the release's 4-over-6 "
                        f"{DEFAULT_WEIGHT_RULE})")
    p.add_argument("--weight-only", action="store_true", help="quantise weights only (no activation quantisation)")
    p.add_argument("--act-scale", choices=list(ACT_SCALE), default=None,
                   help="FP8 activation scales (default: the precision's, else dynamic): dynamic = per token from "
                        "each activation's amax; static = one per-tensor scale per Linear, calibrated on a short run "
                        "at build and frozen (no amax pass; fp8 precisions with quantised activations only)")
    p.add_argument("--kv-quant", choices=list(KV_QUANT), default="none", help="quantised KV cache")
    p.add_argument("--compile", choices=list(COMPILE_MODES), default="none",
                   help="torch.compile the DiT blocks (GPU); a warm-up generation runs first, excluded from timings")
    p.add_argument("--lora", type=Path, default=None,
                   help="a LoRA file (longlive train / DMD output, or a PEFT adapter) merged into the generator before "
                        "fusing and quantising; `longlive lora merge` writes the same merge into a checkpoint")
    p.add_argument("--fuse-qkv", action="store_true",
                   help="one q/k/v GEMM per self-attention (longlive.model.fuse), applied before quantising")
    p.add_argument("--save-latents", action="store_true", help="also write latents.safetensors (always with "
                                                                "--decode none)")
    p.add_argument("--sp", type=int, default=1, help="sequence-parallel ranks (launches torchrun itself)")
    p.add_argument("--exchange", choices=list(EXCHANGE), default="none",
                   help="compress K/V on the SP all-to-all")
    p.add_argument("--no-multishot-sink", action="store_true", help="do not pin the first chunk of a new shot")
    p.add_argument("--clean-recache", action="store_true",
                   help="at a scene cut, the cut chunk's clean re-run attends only [global sink | itself] and the "
                        "rest of the window is dropped (the release's shot_clean_recache)")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache") / "prompt_embeddings")
    p.add_argument("--no-progress", action="store_true")
    _add_generate_io(p)
    p.set_defaults(func=cmd_generate)


def _request(a: argparse.Namespace):
    check_device_string("device", a.device, cli=True)
    if a.frames is None:
        a.frames = default_frames(get_preset(a.model))
    if a.precision is None:
        a.precision = "bf16" if torch.device(a.device).type == "cuda" else "fp32"
    named = precision_config(a.precision)
    precision = request_fields(named)
    precision["act_scale"] = a.act_scale or named.get("act_scale") or "dynamic"
    if a.weight_rule is not None:
        precision["weight_rule"] = a.weight_rule
    if a.weight_only:
        precision["act_quant"] = False
    return VideoRequest(
        model=a.model, frames=a.frames, prompts=a.prompt or [DEFAULT_PROMPT], steps=a.steps, seed=a.seed,
        switch_at=a.switch_at, device=a.device, vae_device=a.vae_device, attn=a.attn, **precision,
        decode=a.decode, checkpoint=a.checkpoint, vae=a.vae, vae_type=a.vae_type, vae_pruning=a.vae_pruning,
        text_encoder=a.text_encoder, tokenizer=a.tokenizer,
        random_weights=a.random_weights, image=a.image, multishot_sink=not a.no_multishot_sink,
        clean_recache=a.clean_recache, cache_dir=a.cache_dir, progress=not a.no_progress,
        kv_quant=a.kv_quant, sp=a.sp, exchange=a.exchange, compile=a.compile, fuse_qkv=a.fuse_qkv, lora=a.lora,
        save_latents=a.save_latents, guidance_scale=a.guidance_scale, negative_prompt=a.negative_prompt,
        timestep_shift=a.timestep_shift, window_frames=a.window_frames, sink_frames=a.sink_frames,
        shot_rope_offset=a.shot_rope_offset, scene_cut_prefix=a.scene_cut_prefix, relative_rope=a.relative_rope,
        **_io_fields(a),
    )


def cmd_generate(a: argparse.Namespace) -> int:
    check_out_dir(a.out)
    req = _request(a)
    validate(req, launched=False)  # every rule before any work, also before SP ranks or many videos start
    if a.prompt_file is not None or a.caption_dir is not None or a.samples != 1 or a.dp != 1:
        return _generate_many(a, req)
    if a.sp > 1 and "WORLD_SIZE" not in os.environ:  # start the ranks ourselves, with the same arguments
        check_sp(get_preset(a.model), a.sp)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if torch.device(a.device).type == "cuda" and a.sp > gpus:
            raise ValueError(f"--sp {a.sp} needs {a.sp} GPUs (one rank per GPU); this machine has {gpus}. Use a "
                             f"machine with {a.sp} GPUs, a smaller --sp, or --device cpu (gloo) for a functional run")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.sp}", "-m",
               "longlive.cli", *a.argv]
        return subprocess.call(cmd)
    validate(req)
    try:
        res = make_video(req, a.out)
    finally:
        shutdown_parallel()  # under torchrun: exit cleanly once rank 0 has written the video
    if not res.is_main:
        return 0
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k not in ("func", "argv")}
    row = generate_row(a, req, res, config)
    write_text_atomic(a.out / "result.json", json.dumps({"rows": [row], "manifest": row["manifest"]}, indent=2,
                                                        default=str))
    wrote = (f"{a.out / 'latents.safetensors'} (latents only: `longlive decode {a.out}` decodes them)"
             if a.decode == "none" else f"{a.out / 'video.mp4'} ({row['frames_video']} frames), {a.out / 'strip.png'}")
    switch = row.get("switch_latency_s")  # several prompts and a decoder: new prompt -> its first frame on the host
    print(f"wrote {wrote}; denoise {row['denoise_fps']:.1f} FPS, end to end {row['e2e_fps']:.1f} FPS "
          f"({a.decode} decode)" + (f", prompt switch {switch:.3f} s to the first frame (median of "
                                    f"{len(row['switch_latency_s_per_switch'])})" if switch is not None else ""))
    return 0


def generate_row(a: argparse.Namespace, req, res, config: dict) -> dict:
    """The result row of one `generate`, in the runner's schema (same columns as a sweep's infer cell), so
    `longlive report` reads a generate folder's result.json like any results file."""
    axes = {"model": a.model, "precision": req.precision, "kv_quant": a.kv_quant, "sp": a.sp, "exchange": a.exchange,
            "steps": a.steps, "decode": a.decode, "hardware": torch.device(a.device).type}
    row = empty_row(None, "generate", "infer", axes, a.frames, req.seed)
    row.update(status="ok", config=config, **res.metrics, timing_definition=res.timing_definition,
               artifacts=res.artifacts, manifest=manifest(config, req.seed),
               metrics_extra={"chunk_ms": res.chunk_ms, "windows": res.windows, "notes": res.notes,
                              "dtype": req.dtype, "act_quant": req.act_quant})
    return row


IO_FIELDS = ("height", "width", "lora_mode", "ema", "act_rule", "quant_exclude", "kv_rule")
"""generate's size, weight and quantisation-rule flags: VideoRequest fields of the same names."""


def _add_generate_io(p: argparse.ArgumentParser) -> None:
    """generate's many-video, size, weight and quantisation-rule options; each help names the release's key."""
    g = p.add_argument_group("many videos (one folder and one results.jsonl row each, the model assembled once)")
    g.add_argument("--prompt-file", type=Path, default=None,
                   help="a text file, one video per non-blank line (the release's data_path as a .txt)")
    g.add_argument("--caption-dir", type=Path, default=None,
                   help="the multi-shot caption layout ROOT/caption/<sample>/<shot>.json ('caption' field) with an "
                        "optional <sample>/shot_durations.txt of chunks per shot: one video per sample folder (the "
                        "release's data_path as a folder)")
    g.add_argument("--chunks-per-shot", type=int, default=0,
                   help="chunks per shot of --caption-dir where a folder has no shot_durations.txt (the release's "
                        "chunks_per_shot; default 0: the shots share the video evenly)")
    g.add_argument("--samples", type=int, default=1,
                   help="videos per prompt, seeds --seed, --seed+1, ... (the release's num_samples)")
    g.add_argument("--dp", type=int, default=1,
                   help="data parallel over videos: N processes under torchrun (launched for you; gloo on CPU), rank "
                        "r taking every N-th video")
    g = p.add_argument_group("size, weights and quantisation rules")
    g.add_argument("--height", type=int, default=None,
                   help="pixel height, a multiple of the VAE stride x patch (the release's image_or_video_shape[3] x "
                        "16; default: the preset's)")
    g.add_argument("--width", type=int, default=None,
                   help="pixel width, a multiple of the VAE stride x patch (image_or_video_shape[4] x 16; default: the "
                        "preset's)")
    g.add_argument("--lora-mode", choices=list(LORA_MODES), default="merge",
                   help="merge: --lora merged into the weights at build; runtime: the adapter kept separate (also "
                        "over quantised or packed NVFP4 Linears; the release's merge_lora=false)")
    g.add_argument("--ema", action="store_true",
                   help="load the checkpoint's EMA weights: a longlive training checkpoint (checkpoints/step_*.pt) or "
                        "a release checkpoint's generator_ema (the release's use_ema)")
    g.add_argument("--act-rule", choices=list(NVFP4_RULES), default=DEFAULT_ACT_RULE,
                   help="NVFP4 activation scale rule of PTQ (the release's model_quant_activation_scale_rule)")
    g.add_argument("--quant-exclude", action="append", default=None, metavar="MODULE",
                   help="repeat: a block Linear (module name, or re:<regex> searched in the name) PTQ leaves "
                        "unquantised (the release's model_quant_filtered_modules; the embeddings, head and norms "
                        "always stay, as the release's default filter keeps them)")
    g.add_argument("--kv-rule", choices=list(NVFP4_RULES), default=DEFAULT_KV_RULE,
                   help="NVFP4 scale rule of --kv-quant nvfp4 (the release's kv_quant_scale_rule)")


def _io_fields(a: argparse.Namespace) -> dict:
    fields = {k: getattr(a, k) for k in IO_FIELDS}
    fields["quant_exclude"] = list(a.quant_exclude or [])
    return fields


def _generate_many(a: argparse.Namespace, req: VideoRequest) -> int:
    """Many videos: the prompt source's entries x --samples, every --dp-th one per rank, each into --out/<name>/
    with its row appended to --out/results.jsonl as soon as it is done; videos with an ok row are skipped, so a
    re-run finishes what an interrupted one left (longlive.infer.batch)."""
    sources = [f for f in ("prompt_file", "caption_dir") if getattr(a, f) is not None]
    if len(sources) > 1:
        raise ValueError("give one prompt source: --prompt-file or --caption-dir")
    if sources and (a.prompt or a.switch_at is not None):
        raise ValueError(f"--{sources[0].replace('_', '-')} gives the prompts: drop --prompt / --switch-at")
    if a.chunks_per_shot and a.caption_dir is None:
        raise ValueError("--chunks-per-shot applies to --caption-dir")
    if a.dp < 1 or a.samples < 1:
        raise ValueError(f"--dp {a.dp} and --samples {a.samples} must be >= 1")
    if a.sp > 1:
        raise ValueError("many videos per command (--prompt-file, --caption-dir, --samples, --dp) run without --sp: "
                         "run them data parallel with --dp, or each video sequence parallel in its own command")
    cfg, _ = validate(req)
    n_chunks = req.frames // cfg.chunk_frames
    if a.prompt_file is not None:
        entries = read_prompt_file(a.prompt_file)
    elif a.caption_dir is not None:
        entries = read_caption_dir(a.caption_dir, n_chunks, a.chunks_per_shot, req.scene_cut_prefix)
    else:
        entries = [PromptEntry(0, "--prompt", tuple(req.prompts),
                               tuple(req.switch_at) if req.switch_at is not None else None)]
    items = video_items(entries, a.samples, a.seed)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if a.dp > 1 and "WORLD_SIZE" not in os.environ:  # start the ranks ourselves, with the same arguments
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if torch.device(a.device).type == "cuda" and a.dp > gpus:
            raise ValueError(f"--dp {a.dp} needs {a.dp} GPUs (one rank per GPU); this machine has {gpus}")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.dp}", "-m",
               "longlive.cli", *a.argv]
        return subprocess.call(cmd)
    if world != a.dp:
        raise ValueError(f"--dp {a.dp} runs as {a.dp} processes; this one is one of WORLD_SIZE={world}")
    rank = 0
    if world > 1:
        dims = init_parallel(1, device=None if torch.device(a.device).type == "cuda" else "cpu")
        req, rank = dataclasses.replace(req, device=str(dims.device)), dims.rank
    store = ResultsStore(a.out)
    done = {cid for cid, r in store.latest().items() if r.get("status") == "ok"
            and all((a.out / v).exists() for v in (r.get("artifacts") or {}).values())}
    mine = dp_share(items, rank, world)
    todo = [it for it in mine if it.name not in done]
    if len(todo) < len(mine):
        print(f"rank {rank}: {len(mine) - len(todo)} of its {len(mine)} videos already done in {store.jsonl}, "
              f"skipped", file=sys.stderr)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k not in ("func", "argv")}

    def on_video(it: VideoItem, r: VideoRequest, res: VideoResult | None, err: BaseException | None) -> None:
        store.append(_video_row(a, it, r, res, err, config))

    try:
        counts = run_videos(req, todo, a.out, on_video, progress=not a.no_progress and rank == 0)
    finally:
        shutdown_parallel()  # every rank finishes before any exits (torchrun stops the group at the first exit)
    print(f"rank {rank}: {counts['ok']} videos ok, {counts['failed']} failed, {len(mine) - len(todo)} already done "
          f"-> {store.jsonl}")
    return 0 if counts["failed"] == 0 else 1


def _video_row(a: argparse.Namespace, it: VideoItem, req: VideoRequest, res: VideoResult | None,
               err: BaseException | None, config: dict) -> dict:
    """One video's row of a many-video generate: cell_id = its folder, artifacts relative to --out."""
    if res is not None:
        row = generate_row(a, req, res, config)
        row["artifacts"] = {k: f"{it.name}/{v}" for k, v in res.artifacts.items()}
    else:
        axes = {"model": a.model, "precision": req.precision, "kv_quant": a.kv_quant, "sp": a.sp,
                "exchange": a.exchange, "steps": a.steps, "decode": a.decode, "hardware": torch.device(a.device).type}
        row = empty_row(None, "generate", "infer", axes, a.frames, req.seed)
        row.update(status="failed", reason=f"{type(err).__name__}: {err}", config=config,
                   manifest=manifest(config, req.seed))
    row.update(cell_id=it.name, dp=a.dp)
    row["metrics_extra"] = {**row["metrics_extra"], "prompt_index": it.entry.index, "sample": it.sample,
                            "prompt_source": it.entry.source, "prompts": list(req.prompts), "switch_at": req.switch_at}
    return row


def _add_decode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode saved latents (generate --decode none or --save-latents) into "
                                      "video.mp4 and strip.png, through generate's own VAE and decoder path")
    p.add_argument("latents", type=Path, help="a latents.safetensors file, or the folder holding one")
    p.add_argument("--out", type=Path, required=True, help="output folder (video.mp4, strip.png)")
    p.add_argument("--decode", choices=[m for m in DECODE_CHOICES if m not in ("none", "tiles")], default=None,
                   help="decode mode (default: the generation's, streaming where it decoded none)")
    p.add_argument("--model", default=None, help="preset (default: from the generate row beside the latents)")
    p.add_argument("--vae", type=Path, default=None, help="VAE checkpoint (default: the generation's)")
    p.add_argument("--vae-type", choices=list(VAE_TYPES), default=None,
                   help="the decoder (default: the generation's, else wan): latents of a Wan2.2-VAE preset decode "
                        "through any of them")
    p.add_argument("--vae-pruning", type=float, default=None,
                   help="rate of a randomly initialised MG-LightVAE (default: the generation's)")
    p.add_argument("--precision", choices=precisions(), default=None, help="default: the generation's")
    p.add_argument("--device", default=None, help="default: the generation's")
    p.add_argument("--vae-device", default=None, help="the VAE's device (decode=device)")
    p.add_argument("--seed", type=int, default=None, help="seed of a seeded VAE (no VAE file; default: the "
                                                          "generation's)")
    p.set_defaults(func=cmd_decode)


def cmd_decode(a: argparse.Namespace) -> int:
    check_out_dir(a.out)
    latents = read_latents(a.latents)
    gen = generation_config(a.latents) or {}
    model = a.model or gen.get("model")
    if model is None:
        raise ValueError(f"--model: no generate row beside {a.latents} says which preset made these latents")
    device = a.device or gen.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = a.precision or gen.get("precision") or ("bf16" if torch.device(device).type == "cuda" else "fp32")
    mode = a.decode or (gen.get("decode") if gen.get("decode") not in (None, "none", "tiles") else "streaming")
    vae_type = a.vae_type or gen.get("vae_type") or "wan"
    same_vae = vae_type == (gen.get("vae_type") or "wan")  # another decoder takes none of the generation's VAE options
    vae = a.vae or (Path(gen["vae"]) if gen.get("vae") and same_vae else None)
    vae_pruning = a.vae_pruning if a.vae_pruning is not None else (
        gen.get("vae_pruning") if same_vae and a.vae is None else None)
    req = VideoRequest(model=model, frames=latents.shape[2], device=device, decode=mode, vae=vae, vae_type=vae_type,
                       vae_pruning=vae_pruning, vae_device=a.vae_device or gen.get("vae_device"),
                       dtype=precision_config(precision)["dtype"],
                       seed=a.seed if a.seed is not None else gen.get("seed", 0), compile=gen.get("compile", "none"),
                       random_weights=bool(gen.get("random_weights", False)), progress=False)
    frames = decode_latents(latents, req)
    write_video(frames, a.out, get_preset(model).fps)
    print(f"wrote {a.out / 'video.mp4'} ({frames.shape[0]} frames) and {a.out / 'strip.png'} from "
          f"{list(latents.shape)} latents ({mode} decode)")
    return 0


def _add_fidelity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fidelity", help="same seed through a reference and a quantised configuration: latent "
                                        "relative error and decoded-video PSNR")
    p.add_argument("--model", required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", action="append", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--ref-precision", default="bf16", help="a name from longlive/experiments/precision/")
    p.add_argument("--ref-kv-quant", default="none")
    p.add_argument("--precision", required=True, help="candidate precision (a name as for --ref-precision)")
    p.add_argument("--kv-quant", default="none", help="candidate KV cache: none, fp8, nvfp4")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_fidelity)


def cmd_fidelity(a: argparse.Namespace) -> int:
    check_out_dir(a.out)
    base = VideoRequest(model=a.model, frames=a.frames, prompts=a.prompt or [DEFAULT_PROMPT], steps=a.steps,
                        seed=a.seed, device=a.device, random_weights=a.random_weights, progress=False)
    for side, (prec, kv) in (("--ref-precision / --ref-kv-quant", (a.ref_precision, a.ref_kv_quant)),
                             ("--precision / --kv-quant", (a.precision, a.kv_quant))):
        try:  # both runs checked by generate's rules before either starts
            validate(dataclasses.replace(base, kv_quant=kv, **precision_fields(prec)))
        except ValueError as exc:
            raise ValueError(f"{side} {prec} / {kv}: {exc}") from None
    res = compare(base, (a.ref_precision, a.ref_kv_quant), (a.precision, a.kv_quant), a.out)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "func"}
    write_text_atomic(a.out / "fidelity.json", json.dumps({**res, "manifest": manifest(config, a.seed)}, indent=2,
                                                          default=str))
    print(f"{a.precision}/kv={a.kv_quant} vs {a.ref_precision}/kv={a.ref_kv_quant}: latent rel. error "
          f"{res['latent_rel_err_vs_ref']:.4f}, PSNR {res['psnr_vs_ref']:.2f} dB -> {a.out / 'fidelity.json'}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    if a.out is not None:
        check_out_dir(a.out)
    if a.tiny_default:

        if a.model != "tiny":
            raise ValueError("--tiny-default trains the tiny preset; pass --model tiny")
        out = Path(a.out) if a.out else check_out_dir(weights_root(must_exist=False) / "tiny", "LONGLIVE_WEIGHTS/tiny")
        train_tiny(out, minutes=a.minutes, seed=a.seed)
        use = f"LONGLIVE_WEIGHTS={out.parent}" if out.name == "tiny" else f"--checkpoint {out / 'model_bf16.pt'} ..."
        print(f"trained tiny weights in {out}. Generate with them: {use} longlive generate --model tiny ...; "
              f"make them the package's shipped weights: python -m longlive.train.tiny ship {out}")
        return 0

    if a.out is None:
        raise ValueError("--out is required (the run directory for metrics and checkpoints)")
    return run_trainer(a)


def cmd_env(a: argparse.Namespace) -> int:
    print(json.dumps(manifest(), indent=2, default=str))
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run an experiment matrix (Hydra overrides), one process per cell, resumable",
                       description="Example: longlive sweep +experiment=smoke steps=4,2 decode=batch,async")
    p.add_argument("overrides", nargs="*", help="Hydra overrides: +experiment=NAME, group=a,b, key=value")
    p.add_argument("--results", type=Path, default=None, help="results folder (default: results/<experiment>)")
    p.add_argument("--force", action="store_true", help="redo cells that already have a row")
    p.add_argument("--retry-failed", action="store_true", help="redo cells whose last row failed")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: this machine; slurm: Hydra multirun through hydra-submitit-launcher")
    p.add_argument("--list", action="store_true", help="print the expanded cells and exit")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)


def _experiment_of(overrides: list[str]) -> tuple[str | None, list[str]]:
    exp = [o for o in overrides if o.startswith("+experiment=")]
    rest = [o for o in overrides if not o.startswith("+experiment=")]
    if len(exp) > 1:
        raise ValueError("give one +experiment=NAME")
    return (exp[0].split("=", 1)[1] if exp else None), rest


def cmd_sweep(a: argparse.Namespace) -> int:

    experiment, rest = _experiment_of(a.overrides)
    weights_root()  # a LONGLIVE_WEIGHTS that is a file or missing stops the sweep here, not as one failed row per cell
    results = check_out_dir(a.results or Path("results") / (experiment or "adhoc"), "--results")
    if a.list:
        for cell in expand(experiment, rest):
            print(cell.cell_id, " ".join(f"{k}={v}" for k, v in cell.axes.items()))
        return 0
    if a.launcher == "slurm":
        # the same up-front check as a local sweep: an invalid value stops it before any job is submitted (the
        # launcher's own hydra.* overrides are Slurm settings, not cells)
        expand(experiment, [o for o in rest if not o.lstrip("+~").startswith("hydra")])
        cmd = [sys.executable, "-m", "longlive.runner.hydra_app", "-m", *a.overrides, "hydra/launcher=slurm",
               f"+results_dir={results.resolve()}"] + (["+force=true"] if a.force else [])
        code = subprocess.call(cmd)
        if code:  # a cancelled or failed job: the rows of finished cells are kept, the rest have none
            print(f"sweep {experiment or 'adhoc'}: some Slurm jobs did not finish (above); the same command resumes, "
                  f"redoing only cells without a row -> {results / 'results.jsonl'}", file=sys.stderr)
        return code
    counts = run_sweep(experiment, rest, results, force=a.force, retry_failed=a.retry_failed,
                       progress=not a.no_progress)
    print(f"sweep {experiment or 'adhoc'}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped, "
          f"{counts['reused']} already done -> {results / 'results.jsonl'}")
    if counts["failed_earlier"]:
        print(f"sweep {experiment or 'adhoc'}: {counts['failed_earlier']} failed earlier, not retried: --retry-failed "
              f"redoes them")
    return 0


class _Version(argparse.Action):
    """`--version`, computed only when asked (it runs git) and printed as one unwrapped line."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace, values, option_string=None) -> None:
        print(version_line())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="longlive", description="Long autoregressive video generation harness")
    ap.add_argument("--version", action=_Version, help="print the package version and the checkout's commit")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_sweep(sub)
    _add_fidelity(sub)
    _add_decode(sub)

    add_report_parser(sub)
    add_compare_parser(sub)
    add_lora_parser(sub)
    add_dmd_parser(sub)
    tp = add_train_parser(sub)
    tp.add_argument("--tiny-default", action="store_true",
                    help="train every tiny-preset component on procedural video (VAE, AR model, 2-step LoRA) into "
                         "LONGLIVE_WEIGHTS/tiny, where generate and make reproduce find them")
    tp.add_argument("--minutes", type=float, default=14.0, help="time budget of --tiny-default")
    tp.set_defaults(func=cmd_train)
    env = sub.add_parser("env", help="print the environment manifest")
    env.set_defaults(func=cmd_env)
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return a.func(a)
    except (ValueError, FileNotFoundError, OutputWriteError) as exc:  # incl. BackendUnavailable; a full disk
        print(f"longlive {a.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C; SIGTERM too (`entry`; a sweep or report: executor.Interrupted)
        print(f"longlive {a.command}: {str(exc) or 'interrupted (Ctrl-C)'}; what finished is kept: rerun the same "
              f"command to resume", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)


def entry() -> None:
    """The `longlive` console script: `main` with SIGTERM raised like Ctrl-C (`Interrupted`) for the whole command,
    then ignored once its exit status is final. Without this a SIGTERM between the end of a sweep (whose own handler
    is gone by then) and the interpreter's exit killed a finished sweep by the signal (status -15, not 0 or 143)."""
    finished: list[bool] = []

    def on_sigterm(signum: int, frame: object) -> None:
        if not finished:
            raise Interrupted(signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        code = main()
    except KeyboardInterrupt as exc:  # a SIGTERM in the instant after `main` returned, before the flag below
        code = 128 + getattr(exc, "signum", signal.SIGINT)
    finished.append(True)
    sys.exit(code)


if __name__ == "__main__":
    entry()
