"""`longlive dmd`: Stage-2 DMD distillation as a command (spec 04, "Stage 2"), from generator, real-score and
fake-score checkpoints, with the release's knobs.

Each knob is a `DMDConfig` field, spelled with dashes as a flag and unchanged as a run-spec field and result column
(the release key is in the field's comment); defaults come from `DMDConfig`, so they are written once. Every cheap
check — preset, knob values, rollout length against the chunk, the out folder, checkpoint files and their layout,
prompts, text-encoder files — runs before any network is built. The out folder receives `lora.pt` (adapter lora:
`longlive generate --lora`, `longlive lora merge`) or `generator.pt` (adapter none: `longlive generate --checkpoint`),
`metrics.jsonl`, `summary.json` and resumable `checkpoints/`; a rerun with the same --out resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from longlive.model import dit
from longlive.model.checkpoint import NVFP4_FORMAT, checkpoint_format, load_generator
from longlive.model.presets import PRESETS, ModelConfig, get_preset
from longlive.names import DMD_ADAPTERS, DMD_QUANTISED
from longlive.output import check_out_dir
from longlive.text import EmbeddingCache
from longlive.text.prompts import DEFAULT_NEGATIVE_PROMPT
from longlive.train.dmd import DMDConfig, DMDTrainer, PromptCycle, check_step_list, resolve_frames
from longlive.train.measure import DMD_RUNGS
from longlive.weights import default_paths, load_text_for, require

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""--precision: the dtype every network's weights and activations run in (LoRA adapters follow it)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dmd_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`longlive dmd`: the parser; flags are the DMDConfig field names with dashes, defaults DMDConfig's."""
    d = DMDConfig()
    p = subparsers.add_parser(
        "dmd", help="Stage-2 DMD few-step distillation (LoRA or full fine-tuning) from checkpoints; resumable",
        description="Writes OUT/lora.pt (or OUT/generator.pt with --adapter none), metrics.jsonl, summary.json and "
                    "checkpoints/. Defaults are the release's configs/train_dmd.yaml.")
    p.add_argument("--model", default="tiny", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--out", type=Path, required=True, help="run folder (a rerun with the same folder resumes)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="generator file: the student's base and, unless given separately, the real and fake scores' "
                        "(the release's generator_ckpt; default: the preset's under LONGLIVE_WEIGHTS)")
    p.add_argument("--real-score-checkpoint", type=Path, default=None,
                   help="teacher (real score) weights, same preset (real_score_ckpt; default: --checkpoint)")
    p.add_argument("--fake-score-checkpoint", type=Path, default=None,
                   help="critic (fake score) starting weights, same preset (fake_score_ckpt; default: --checkpoint)")
    p.add_argument("--prompt", action="append", default=None, help="a training prompt (repeat for several)")
    p.add_argument("--prompt-file", type=Path, default=None,
                   help="training prompts, one per line (the release's data_path text file)")
    p.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT,
                   help="the unconditional text of the real score's CFG (and the fake score's when "
                        "--fake-guidance-scale is not 0); default: the release's")
    p.add_argument("--text-encoder", type=Path, default=None, help="text encoder checkpoint (default: the preset's)")
    p.add_argument("--tokenizer", type=Path, default=None, help="umT5 tokenizer folder")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache") / "prompt_embeddings")
    # the rollout
    p.add_argument("--frames", type=int, default=d.frames,
                   help="rollout latents, whole blocks (num_training_frames; default: the preset's attention window, "
                        "32 on the 5B preset as in the release)")
    p.add_argument("--min-frames", type=int, default=d.min_frames,
                   help="shortest rollout: each rollout draws its length in whole blocks from [min-frames, frames] "
                        "(min_num_training_frames; default: --frames)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"denoising steps per block, as `generate --steps` (sampling_steps; default: the length of "
                        f"--denoising-step-list, else {d.steps})")
    p.add_argument("--denoising-step-list", type=int, nargs="+", default=None, metavar="T",
                   help="the rollout's model timesteps, strictly decreasing in (0, 1000] (denoising_step_list; "
                        "default: the grid of --steps, e.g. 999 937 833 624)")
    p.add_argument("--timestep-shift", type=float, default=d.timestep_shift,
                   help="shift of the rollout grid and of the DMD / critic timesteps (timestep_shift)")
    # the objective
    p.add_argument("--real-guidance-scale", type=float, default=d.real_guidance_scale,
                   help="teacher CFG r = r_c + s (r_c - r_u) (real_guidance_scale)")
    p.add_argument("--fake-guidance-scale", type=float, default=d.fake_guidance_scale,
                   help="critic CFG in the DMD gradient; 0: conditional only, no extra forward (fake_guidance_scale)")
    p.add_argument("--ts-schedule", action=argparse.BooleanOptionalAction, default=d.ts_schedule,
                   help="draw DMD / critic timesteps no lower than the exit step's next timestep (ts_schedule)")
    p.add_argument("--ts-schedule-max", action=argparse.BooleanOptionalAction, default=d.ts_schedule_max,
                   help="... and no higher than the exit step's timestep (ts_schedule_max)")
    p.add_argument("--min-score-timestep", type=int, default=d.min_score_timestep,
                   help="lower end of the timestep draw without --ts-schedule (min_score_timestep)")
    p.add_argument("--min-t", type=float, default=d.min_t, help="clamp of the shifted timesteps (the release's 20)")
    p.add_argument("--max-t", type=float, default=d.max_t, help="(the release's 980)")
    p.add_argument("--dfake-gen-update-ratio", type=int, default=d.dfake_gen_update_ratio,
                   help="critic updates per generator update: the generator updates on steps 0, r, 2r, ..., the "
                        "critic on every step (dfake_gen_update_ratio)")
    # what trains, and how
    p.add_argument("--adapter", choices=list(DMD_ADAPTERS), default=d.adapter,
                   help="lora: a LoRA on the 300 block Linears of generator and critic; none: full fine-tuning")
    p.add_argument("--lora-rank", type=int, default=d.lora_rank, help="adapter.rank")
    p.add_argument("--lora-alpha", type=float, default=d.lora_alpha, help="adapter.alpha (merge scale alpha/rank)")
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout, help="adapter.dropout")
    p.add_argument("--apply-to-critic", action=argparse.BooleanOptionalAction, default=d.apply_to_critic,
                   help="the critic gets a LoRA too (adapter.apply_to_critic; --no-apply-to-critic: it trains every "
                        "weight)")
    p.add_argument("--lr", type=float, default=d.lr, help="generator learning rate (training.lr)")
    p.add_argument("--lr-critic", type=float, default=d.lr_critic, help="critic learning rate (training.lr_critic)")
    p.add_argument("--betas", type=float, nargs=2, default=list(d.betas), metavar=("B1", "B2"),
                   help="generator AdamW betas (beta1, beta2)")
    p.add_argument("--betas-critic", type=float, nargs=2, default=list(d.betas_critic), metavar=("B1", "B2"),
                   help="critic AdamW betas (beta1_critic, beta2_critic)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm,
                   help="gradient clip of both networks (max_grad_norm_generator / _critic)")
    p.add_argument("--train-steps", type=int, default=d.train_steps,
                   help="optimiser steps (max_iters; denoising steps are --steps)")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every,
                   help="resumable checkpoint and adapter export every N steps (log_iters)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help="newest checkpoints kept, <= 0 keeps all (max_checkpoints)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=d.resume,
                   help="continue from the newest checkpoint in --out")
    p.add_argument("--seed", type=int, default=d.seed)
    # memory and device
    p.add_argument("--dmd-quantised", choices=list(DMD_QUANTISED), default="none",
                   help="frozen networks held as packed NVFP4 (Table 2's rungs)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction,
                   default=d.activation_checkpointing, help="recompute each block in backward")
    p.add_argument("--precision", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--attn", default=d.attn, help="rollout attention backend")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_dmd)
    return p


def dmd_config(a: argparse.Namespace) -> DMDConfig:
    """The flags as a DMDConfig (its checks run here); --steps follows --denoising-step-list when not given."""
    step_list = None if a.denoising_step_list is None else check_step_list(a.denoising_step_list)
    steps = a.steps if a.steps is not None else (len(step_list) if step_list else DMDConfig.steps)
    gq, tq, cq = DMD_RUNGS[a.dmd_quantised]
    return DMDConfig(
        frames=a.frames, min_frames=a.min_frames, steps=steps, denoising_step_list=step_list,
        timestep_shift=a.timestep_shift, real_guidance_scale=a.real_guidance_scale,
        fake_guidance_scale=a.fake_guidance_scale, ts_schedule=a.ts_schedule, ts_schedule_max=a.ts_schedule_max,
        min_score_timestep=a.min_score_timestep, min_t=a.min_t, max_t=a.max_t,
        dfake_gen_update_ratio=a.dfake_gen_update_ratio, lr=a.lr, lr_critic=a.lr_critic, betas=tuple(a.betas),
        betas_critic=tuple(a.betas_critic), weight_decay=a.weight_decay, max_grad_norm=a.max_grad_norm,
        adapter=a.adapter, lora_rank=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
        apply_to_critic=a.apply_to_critic, train_steps=a.train_steps, ckpt_every=a.ckpt_every,
        keep_checkpoints=a.keep_checkpoints, resume=a.resume, progress=not a.no_progress, seed=a.seed,
        quant_generator=gq, quant_teacher=tq, quant_critic=cq, activation_checkpointing=a.activation_checkpointing,
        attn=a.attn)


def read_prompts(a: argparse.Namespace) -> list[str]:
    """--prompt values, then the non-empty lines of --prompt-file; at least one."""
    prompts = list(a.prompt or [])
    if a.prompt_file is not None:
        if not a.prompt_file.is_file():
            raise FileNotFoundError(f"--prompt-file {a.prompt_file} not found")
        prompts += [ln.strip() for ln in a.prompt_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not prompts:
        raise ValueError("DMD needs training prompts: give --prompt TEXT (repeatable) or --prompt-file FILE")
    return prompts


def check_generator_file(path: Path, flag: str) -> Path:
    """The file exists and is a BF16 generator layout (a packed NVFP4 file cannot train or take a merge)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{flag}: generator checkpoint not found: expected {path} (a model_bf16.pt-style file "
                                f"or a folder of *.safetensors shards)")
    if checkpoint_format(path) == NVFP4_FORMAT:
        raise ValueError(f"{flag} {path} is a packed NVFP4 generator; DMD starts from BF16 weights (the LoRA merges "
                         f"into them). Give the BF16 checkpoint; --dmd-quantised holds frozen networks in NVFP4")
    return Path(path)


def plan(a: argparse.Namespace) -> dict[str, Any]:
    """Every check that builds nothing: the resolved config, files and prompts of this run."""
    mc = get_preset(a.model)
    cfg = dmd_config(a)
    resolve_frames(cfg, mc)
    check_out_dir(a.out)
    prompts = read_prompts(a)
    paths = default_paths(mc)
    generator = check_generator_file(a.checkpoint or paths.generator, "--checkpoint")
    real = check_generator_file(a.real_score_checkpoint, "--real-score-checkpoint") \
        if a.real_score_checkpoint is not None else None
    fake = check_generator_file(a.fake_score_checkpoint, "--fake-score-checkpoint") \
        if a.fake_score_checkpoint is not None else None
    text, tokenizer = a.text_encoder or paths.text, a.tokenizer or paths.tokenizer
    if mc.text_encoder != "tiny":  # umT5 loads from files; the tiny encoder falls back to seeded weights
        require(text, "umT5 text encoder checkpoint")
        if tokenizer is not None:
            require(tokenizer, "umT5 tokenizer folder")
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = a.precision or ("bf16" if device.type == "cuda" else "fp32")
    return {"model_cfg": mc, "cfg": cfg, "prompts": prompts, "generator": generator, "real_score": real,
            "fake_score": fake, "text": text, "tokenizer": tokenizer, "device": device, "dtype": DTYPES[precision]}


def load_network(mc: ModelConfig, path: Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """One network from a generator file, strictly (a file of another preset names its first mismatched key)."""
    model = dit.build_model(mc, device=device, dtype=dtype, init=False)
    load_generator(model, path)
    return model.eval().requires_grad_(False)


def build_trainer(a: argparse.Namespace) -> DMDTrainer:
    """Plan (cheap checks), encode the prompts through the embedding cache, load the networks, make the trainer."""
    run = plan(a)
    mc, device, dtype = run["model_cfg"], run["device"], run["dtype"]
    text, _ = load_text_for(mc, run["text"], run["tokenizer"], device=device, seed=a.seed)
    embeds = EmbeddingCache(a.cache_dir).encode(text, [*run["prompts"], a.negative_prompt], device="cpu").to(dtype)
    del text
    base = load_network(mc, run["generator"], device, dtype)
    scores = {name: load_network(mc, run[name], device, dtype) if run[name] is not None else None
              for name in ("real_score", "fake_score")}
    return DMDTrainer(base, run["cfg"], PromptCycle(embeds[:-1], seed=a.seed), a.out, negative_embed=embeds[-1:],
                      **scores)


def cmd_dmd(a: argparse.Namespace) -> int:
    trainer = build_trainer(a)
    summary = trainer.run()
    shown = {k: summary[k] for k in ("train_steps", "steps_this_run", "resumed_from", "generator_updates",
                                     "critic_updates", "generator_loss", "critic_loss", "output")}
    print(json.dumps(shown))
    steps = summary["generate_steps"]
    if summary["adapter"] == "lora":
        gen = a.checkpoint or default_paths(get_preset(a.model)).generator
        use = f"longlive generate --model {a.model} --checkpoint {gen} --lora {summary['output']}"
    else:
        use = f"longlive generate --model {a.model} --checkpoint {summary['output']}"
    print(f"dmd: {summary['output']}; generate with it: {use}"
          + (f" --steps {steps}" if steps is not None else " (its step list is not a --steps grid)"))
    return 0
