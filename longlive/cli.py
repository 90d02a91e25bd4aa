"""`longlive` console entry point: `generate` a video, print the `env` manifest.

Every check that can fail cheaply (preset, frame count, weight files, devices) runs before any model is
built, so bad input costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from longlive.experiments import precision_config, precisions, request_fields
from longlive.infer.assemble import make_video
from longlive.infer.fidelity import compare, precision_fields
from longlive.infer.video import DECODE_CHOICES, DEFAULT_PROMPT, VideoRequest, validate
from longlive.measure.manifest import manifest
from longlive.model.attention import BACKENDS
from longlive.model.presets import DEFAULT_VIDEO_SECONDS, PRESETS, default_frames, get_preset
from longlive.names import COMPILE_MODES, EXCHANGE, KV_QUANT
from longlive.output import check_out_dir, write_text_atomic
from longlive.parallel.groups import check_sp, shutdown_parallel
from longlive.quant.linear import DEFAULT_WEIGHT_RULE
from longlive.quant.nvfp4 import RULES as NVFP4_RULES
from longlive.report import add_report_parser
from longlive.runner.executor import run_sweep
from longlive.runner.matrix import expand
from longlive.runner.schema import empty_row
from longlive.train.lora import add_lora_parser
from longlive.train.tiny import train_tiny
from longlive.train.trainer import add_train_parser
from longlive.train.trainer import cmd_train as run_trainer
from longlive.weights import weights_root


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video autoregressively, chunk by chunk")
    p.add_argument("--model", required=True, help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--prompt", action="append", default=None,
                   help="repeat for multi-prompt videos. A prompt starting with 'The scene transitions. ' opens a new "
                        "shot (the release's convention): its first chunk is conditioned on the prompt as written, "
                        "the shot's later chunks on the bare caption. Any other prompt switches the text within the "
                        "shot")
    p.add_argument("--switch-at", type=int, nargs="*", default=None, metavar="CHUNK",
                   help="chunk index at which each prompt after the first begins (default: evenly spread)")
    defaults = ", ".join(f"{n} {default_frames(c)}" for n, c in PRESETS.items())
    p.add_argument("--frames", type=int, default=None,
                   help=f"latent frames, a multiple of the preset's chunk; T latents decode to 1 + 4(T-1) video frames "
                        f"(default: about {DEFAULT_VIDEO_SECONDS:g} s of video: {defaults})")
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
    p.add_argument("--attn", default="auto", choices=list(BACKENDS), help="attention backend")
    p.add_argument("--decode", default="streaming", choices=list(DECODE_CHOICES),
                   help="when and where latents become frames (none: latents only, no VAE)")
    p.add_argument("--precision", choices=precisions(), default=None,
                   help="a named precision, as in sweeps and `fidelity` (longlive/experiments/precision/): dtype, "
                        "block-Linear format and backend (fp8: real W8A8 GEMMs, cc >= 8.9; *-emulated / nvfp4: "
                        "dequantise + high-precision GEMM, any device; *-te: TransformerEngine). Default: bf16 on GPU, "
                        "fp32 on CPU")
    p.add_argument("--weight-rule", default=None, choices=list(NVFP4_RULES),
                   help=f"override the NVFP4 weight rule (default: the precision's, else the release's 4-over-6 "
                        f"{DEFAULT_WEIGHT_RULE})")
    p.add_argument("--weight-only", action="store_true", help="quantise weights only (no activation quantisation)")
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
    p.set_defaults(func=cmd_generate)


def _request(a: argparse.Namespace):
    if a.frames is None:
        a.frames = default_frames(get_preset(a.model))
    if a.precision is None:
        a.precision = "bf16" if torch.device(a.device).type == "cuda" else "fp32"
    precision = request_fields(precision_config(a.precision))
    if a.weight_rule is not None:
        precision["weight_rule"] = a.weight_rule
    if a.weight_only:
        precision["act_quant"] = False
    return VideoRequest(
        model=a.model, frames=a.frames, prompts=a.prompt or [DEFAULT_PROMPT], steps=a.steps, seed=a.seed,
        switch_at=a.switch_at, device=a.device, vae_device=a.vae_device, attn=a.attn, **precision,
        decode=a.decode, checkpoint=a.checkpoint, vae=a.vae, text_encoder=a.text_encoder, tokenizer=a.tokenizer,
        random_weights=a.random_weights, image=a.image, multishot_sink=not a.no_multishot_sink,
        clean_recache=a.clean_recache, cache_dir=a.cache_dir, progress=not a.no_progress,
        kv_quant=a.kv_quant, sp=a.sp, exchange=a.exchange, compile=a.compile, fuse_qkv=a.fuse_qkv, lora=a.lora,
        save_latents=a.save_latents,
    )


def cmd_generate(a: argparse.Namespace) -> int:
    check_out_dir(a.out)
    req = _request(a)
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
    print(f"wrote {a.out / 'video.mp4'} ({row['frames_video']} frames), {a.out / 'strip.png'}; "
          f"denoise {row['denoise_fps']:.1f} FPS, end to end {row['e2e_fps']:.1f} FPS ({a.decode} decode)")
    return 0


def generate_row(a: argparse.Namespace, req, res, config: dict) -> dict:
    """The result row of one `generate`, in the runner's schema (same columns as a sweep's infer cell), so
    `longlive report` reads a generate folder's result.json like any results file."""
    axes = {"model": a.model, "precision": req.precision, "kv_quant": a.kv_quant, "sp": a.sp, "exchange": a.exchange,
            "steps": a.steps, "decode": a.decode, "hardware": torch.device(a.device).type}
    row = empty_row(None, "generate", "infer", axes, a.frames, a.seed)
    row.update(status="ok", config=config, **res.metrics, timing_definition=res.timing_definition,
               artifacts=res.artifacts, manifest=manifest(config, a.seed),
               metrics_extra={"chunk_ms": res.chunk_ms, "windows": res.windows, "notes": res.notes,
                              "dtype": req.dtype, "act_quant": req.act_quant})
    return row


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
    precision_fields(a.ref_precision), precision_fields(a.precision)  # unknown names fail before any work
    check_out_dir(a.out)
    base = VideoRequest(model=a.model, frames=a.frames, prompts=a.prompt or [DEFAULT_PROMPT], steps=a.steps,
                        seed=a.seed, device=a.device, random_weights=a.random_weights, progress=False)
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
        out = Path(a.out) if a.out else weights_root() / "tiny"
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
    results = check_out_dir(a.results or Path("results") / (experiment or "adhoc"), "--results")
    if a.list:
        for cell in expand(experiment, rest):
            print(cell.cell_id, " ".join(f"{k}={v}" for k, v in cell.axes.items()))
        return 0
    if a.launcher == "slurm":
        cmd = [sys.executable, "-m", "longlive.runner.hydra_app", "-m", *a.overrides, "hydra/launcher=slurm",
               f"+results_dir={results.resolve()}"] + (["+force=true"] if a.force else [])
        return subprocess.call(cmd)
    counts = run_sweep(experiment, rest, results, force=a.force, retry_failed=a.retry_failed,
                       progress=not a.no_progress)
    print(f"sweep {experiment or 'adhoc'}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped, "
          f"{counts['reused']} already done -> {results / 'results.jsonl'}")
    if counts["failed_earlier"]:
        print(f"sweep {experiment or 'adhoc'}: {counts['failed_earlier']} failed earlier, not retried: --retry-failed "
              f"redoes them")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="longlive", description="Long autoregressive video generation harness")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_sweep(sub)
    _add_fidelity(sub)

    add_report_parser(sub)
    add_lora_parser(sub)
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
    except (ValueError, FileNotFoundError) as exc:  # includes BackendUnavailable
        print(f"longlive {a.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
