"""The typed run spec: one dataclass per config group and one for the whole run, registered in Hydra's ConfigStore.

`config.yaml` lists `run_spec` first in its defaults, so every YAML preset and every command-line override is
merged into these dataclasses: an unknown key or a value of the wrong type stops the sweep when it is composed,
before any cell runs, with Hydra's message naming the key. `check_spec` then checks the value sets
(`longlive.names`). A field's name is its override, its result column and its report label.

Workloads receive a `RunSpec` (`from_config` turns a cell's resolved config back into one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from longlive.names import (
    COMPILE_MODES,
    DMD_QUANTISED,
    DTYPES,
    EXCHANGE,
    KV_QUANT,
    LINEAR_BACKENDS,
    LINEAR_QUANT,
    TRAIN_LAYOUTS,
    check_choice,
)


@dataclass
class ModelSpec:
    name: str = "tiny"  # a preset of longlive.model.presets


@dataclass
class PrecisionSpec:
    name: str = "fp32"                     # the named precision (precision/<name>.yaml)
    dtype: str = "fp32"                    # parameters and activations: fp32 | bf16 | fp16
    linear_quant: str = "none"             # DiT block Linears: none | fp8 | nvfp4
    linear_backend: str | None = None   # emulated | fp8 | te (None without linear_quant)
    act_quant: bool = True                 # False: weight-only
    weight_rule: str | None = None      # NVFP4 weight scale rule (None: longlive.quant.linear's default)


@dataclass
class KVQuantSpec:
    name: str = "none"  # none | fp8 | nvfp4


@dataclass
class DecodeSpec:
    mode: str = "streaming"            # a decode mode of longlive.infer.decode (none: latents only)
    vae_device: str | None = None   # decode=device: the VAE's own GPU


@dataclass
class HardwareSpec:
    name: str = "cpu"
    device: str = "cpu"                # cpu | cuda
    gpu_name: str | None = None     # a cell asking for a GPU kind runs only where that kind is present
    min_gpus: int = 0


@dataclass
class WorkloadSpec:
    name: str = "infer"  # a registered workload (longlive.workloads)


@dataclass
class QualitySpec:
    metrics: list[str] = field(default_factory=lambda: ["temporal_flickering"])
    vbench_dimensions: list[str] = field(default_factory=list)
    # fidelity against the cell that differs from this one only in these fields (latent rel. error, PSNR)
    reference: dict[str, Any] = field(default_factory=dict)
    add_reference: bool = False          # run the reference cell first when the matrix does not hold it


@dataclass
class RunSpec:
    """Everything one cell (or one `longlive generate`) is: a config group per component, plain fields for the rest."""

    model: ModelSpec = field(default_factory=ModelSpec)
    precision: PrecisionSpec = field(default_factory=PrecisionSpec)
    kv_quant: KVQuantSpec = field(default_factory=KVQuantSpec)
    decode: DecodeSpec = field(default_factory=DecodeSpec)
    hardware: HardwareSpec = field(default_factory=HardwareSpec)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    quality: QualitySpec = field(default_factory=QualitySpec)
    experiment: str = "adhoc"
    # generation
    steps: int = 4                       # denoising steps per chunk (+1 clean re-run)
    frames: int = 16                     # latent frames (a multiple of the model's chunk)
    seed: int = 0
    prompts: list[str] = field(default_factory=list)
    switch_at: list[int] | None = None
    random_weights: bool = False
    lora: str | None = None              # a LoRA file merged into the generator at build (before quantising)
    attn: str = "auto"
    compile: str = "none"
    fuse_qkv: bool = False               # one q/k/v GEMM per self-attention (before quantising)
    # parallelism
    sp: int = 1
    dp: int = 1
    exchange: str = "none"
    # training (workload=train) and DMD (workload=dmd)
    train_layout: str = "balanced"
    error_recycling: bool = False
    train_iters: int = 3
    dmd_quantised: str = "none"
    dmd_iters: int = 2
    lora_rank: int = 128
    # the vae_decode workload: latent chunks decoded (the first is the warm start of the causal caches)
    decode_chunks: int = 4
    roofline: bool = True                # infer: measure GEMM / attention ceilings in the cell's process
    profile: bool = False                # infer: profile a window-filling run after the timed one (profile.txt)
    train_minutes: float = 14.0          # tiny_default: the wall-clock budget of the whole tiny recipe
    cell_timeout_s: int = 1800
    results_dir: str | None = None    # `python -m longlive.runner.hydra_app`: where rows go
    force: bool = False                  # hydra_app: redo a finished cell
    matrices: list[Any] = field(default_factory=list)


def register() -> None:
    """Put the schema into Hydra's ConfigStore (idempotent; `config.yaml` names it first in its defaults)."""
    cs = ConfigStore.instance()
    cs.store(name="run_spec", node=RunSpec)


def check_spec(spec: RunSpec) -> None:
    """The value sets of the plain fields (types were checked by OmegaConf at composition)."""
    check_choice("kv_quant", spec.kv_quant.name, KV_QUANT)
    check_choice("precision.linear_quant", spec.precision.linear_quant, LINEAR_QUANT)
    check_choice("precision.dtype", spec.precision.dtype, DTYPES)
    if spec.precision.linear_quant != "none":
        check_choice("precision.linear_backend", spec.precision.linear_backend, LINEAR_BACKENDS)
    check_choice("exchange", spec.exchange, EXCHANGE)
    check_choice("compile", spec.compile, COMPILE_MODES)
    check_choice("train_layout", spec.train_layout, TRAIN_LAYOUTS)
    check_choice("dmd_quantised", spec.dmd_quantised, DMD_QUANTISED)
    for name in ("steps", "frames", "sp", "dp", "train_iters", "dmd_iters", "lora_rank", "decode_chunks"):
        if getattr(spec, name) < 1:
            raise ValueError(f"{name}={getattr(spec, name)} must be ≥ 1")


def from_config(config: dict[str, Any]) -> RunSpec:
    """A cell's resolved config (plain dict) → a checked RunSpec."""
    merged = OmegaConf.merge(OmegaConf.structured(RunSpec), {k: v for k, v in config.items() if k != "hydra"})
    spec = OmegaConf.to_object(merged)
    check_spec(spec)
    return spec


register()
