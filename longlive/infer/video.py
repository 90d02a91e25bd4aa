"""What one video is (`VideoRequest`) and the cheap checks that run before anything heavy (`validate`).

`longlive.infer.assemble` builds and runs a request; `longlive generate`, `fidelity` and the runner's `infer`
workload all make a `VideoRequest`, whose field names are the run spec's (docs/architecture.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longlive.infer.decode import DECODE_MODES
from longlive.infer.pipeline import chunk_texts
from longlive.model.attention import BACKENDS
from longlive.model.presets import get_preset
from longlive.names import COMPILE_MODES, EXCHANGE, KV_QUANT, LINEAR_QUANT
from longlive.parallel.groups import check_sp
from longlive.quant.linear import DEFAULT_WEIGHT_RULE, check_backend
from longlive.weights import default_paths, require

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_PROMPT = "A red ball bounces across a blue floor"
DECODE_CHOICES = ("none", *DECODE_MODES)
"""decode: a registered decode mode, or none (latents only: no VAE, latents.safetensors written)."""


@dataclass
class VideoRequest:
    model: str  # a preset of longlive.model.presets
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
    lora: Path | None = None          # a LoRA file (generator adapter) merged at build, before fuse and quantise
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
    linear_quant: str = "none"        # block Linears: none | fp8 | nvfp4 (PTQ at load)
    linear_backend: str = "emulated"  # emulated | fp8 | te (explicit; recorded in results)
    weight_rule: str = DEFAULT_WEIGHT_RULE  # NVFP4 weight rule (the release's 4-over-6 `mse`)
    act_quant: bool = True            # W4A4 / W8A8 (False: weight-only)
    kv_quant: str = "none"            # none | fp8 | nvfp4
    sp: int = 1                       # sequence-parallel ranks (run under torchrun; `longlive generate` does it)
    exchange: str = "none"            # SP all-to-all compression of K/V: none | fp8 | nvfp4
    compile: str = "none"             # torch.compile of the DiT blocks: none | default | max-autotune-no-cudagraphs
    fuse_qkv: bool = False            # one q/k/v GEMM per self-attention (longlive.model.fuse), before quantising

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            if self.dtype not in DTYPES:
                raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
            return DTYPES[self.dtype]
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32


def validate(req: VideoRequest):
    """All cheap checks before anything heavy. Returns (preset config, default weight paths or None)."""
    cfg = get_preset(req.model)
    if req.frames <= 0 or req.frames % cfg.chunk_frames:
        raise ValueError(
            f"--frames {req.frames} is not a multiple of the {req.model} chunk of {cfg.chunk_frames} latent frames"
        )
    if req.decode not in DECODE_CHOICES:
        raise ValueError(f"unknown --decode {req.decode!r}; choose one of {', '.join(DECODE_CHOICES)}")
    if req.decode == "tiles" and (req.sp < 2 or req.vae_device):
        raise ValueError(f"decode=tiles splits each chunk's decode over the SP ranks: it needs sp >= 2 (got sp="
                         f"{req.sp}) and each rank's own GPU (got vae_device={req.vae_device!r})")
    if req.attn not in BACKENDS:
        raise ValueError(f"unknown --attn {req.attn!r}; choose one of {', '.join(BACKENDS)}")
    req.torch_dtype  # noqa: B018  (validates dtype)
    for dev in filter(None, (req.device, req.vae_device)):
        d = torch.device(dev)
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise ValueError(f"device {dev} is not available on this machine")
    chunk_texts(req.prompts, req.frames // cfg.chunk_frames, req.switch_at)
    if req.sp > 1:
        check_sp(cfg, req.sp)
        if req.exchange not in EXCHANGE:
            raise ValueError(f"unknown --exchange {req.exchange!r}; choose one of {', '.join(EXCHANGE)}")
        if int(os.environ.get("WORLD_SIZE", "1")) != req.sp:
            raise ValueError(f"sp={req.sp} runs as {req.sp} processes under torchrun (WORLD_SIZE={req.sp}); "
                             f"`longlive generate --sp {req.sp}` launches them for you")
    if req.compile not in COMPILE_MODES:
        raise ValueError(f"unknown --compile {req.compile!r}; choose one of {', '.join(COMPILE_MODES)}")
    if req.kv_quant not in KV_QUANT:
        raise ValueError(f"unknown --kv-quant {req.kv_quant!r}; choose one of {', '.join(KV_QUANT)}")
    if req.linear_quant not in LINEAR_QUANT:
        raise ValueError(f"unknown linear_quant {req.linear_quant!r}; choose one of {', '.join(LINEAR_QUANT)}")
    if req.linear_quant != "none":
        check_backend(req.linear_quant, req.linear_backend, req.device)
    if req.image is not None:
        require(req.image, "--image")
    if req.lora is not None:
        require(req.lora, "--lora")
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
