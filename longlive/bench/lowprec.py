"""Benchmark: precision × KV-cache quantisation on one preset, same seed and same (random) weights.

For each precision (bf16 | fp8 | nvfp4 ... as named in longlive/experiments/precision/) the BF16 model is rebuilt from
the seed and post-training quantised; for each kv_quant a short generation runs. Reported per cell: weight
memory (packed bytes of every parameter and buffer), KV-cache memory (packed and with the dequantisation
scratch), per-chunk ms and denoise FPS (spec 05 definition), peak memory, and fidelity against the first cell
(latent relative error over all chunks; PSNR of the first `decode_latents` latents decoded by the VAE).

    python -m longlive.bench.lowprec --preset wan2.2-ti2v-5b --chunks 6 --out lowprec.json
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch

from longlive.eval.fidelity import latent_rel_err, psnr
from longlive.infer.fidelity import precision_fields
from longlive.infer.pipeline import GenerationSpec, generate
from longlive.infer.video import DTYPES
from longlive.measure.manifest import manifest
from longlive.measure.memory import peaks, reset_peaks
from longlive.model.attention import resolve_backend
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.quant.kernels import active_kernels
from longlive.quant.linear import BackendUnavailable, LinearQuantConfig, check_backend
from longlive.quant.recipes import model_weight_bytes, quantize_model


def _frames(vae, lat: torch.Tensor) -> torch.Tensor:
    from longlive.infer.decode import frames_to_uint8

    with torch.no_grad():
        return frames_to_uint8(vae.decode(lat.to(vae.dtype))).cpu()


def run(preset: str, chunks: int, steps: int, precisions: list[str], kvs: list[str], device: str, seed: int,
        decode_latents: int, attn: str) -> dict:
    cfg = get_preset(preset)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    embeds = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)]
    slots = cfg.window_frames // cfg.chunk_frames
    vae = None
    if decode_latents:
        from longlive.vae import build_vae

        torch.manual_seed(seed)
        vae = build_vae(cfg.vae, device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    rows, ref_lat, ref_frames = [], None, None
    for prec in precisions:
        fields = precision_fields(prec)
        row_base = {"preset": preset, "precision": prec, "steps": steps, "chunks": chunks,
                    "linear_backend": fields["linear_backend"] if fields["quant"] != "none" else None}
        try:
            if fields["quant"] != "none":
                check_backend(fields["quant"], fields["linear_backend"], dev)
        except BackendUnavailable as exc:
            rows += [{**row_base, "kv_quant": kv, "status": "skipped", "reason": str(exc)} for kv in kvs]
            print(f"{prec}: skipped: {exc}", flush=True)
            continue
        dtype = DTYPES[fields["dtype"]]
        model = build_model(cfg, device=dev, dtype=dtype, seed=seed).eval().requires_grad_(False)
        model.attn_backend = resolve_backend(attn, dev)
        bf16_bytes = model_weight_bytes(model)
        ptq = {}
        if fields["quant"] != "none":
            rep = quantize_model(model, LinearQuantConfig(fmt=fields["quant"], backend=fields["linear_backend"],
                                                          weight_rule=fields["weight_rule"],
                                                          act_quant=fields["act_quant"]), device=dev)
            ptq = rep.summary()
        weights = model_weight_bytes(model)
        for kv in kvs:
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            reset_peaks(dev)
            spec = GenerationSpec(prompts=["random"], frames=chunks * cfg.chunk_frames, steps=steps, seed=seed,
                                  warmup_chunks=slots - 1, kv_quant=kv)
            res = generate(model, spec, [e.to(dev, dtype) for e in embeds])
            lat = res.latents.float()
            row = {**row_base, "kv_quant": kv, "status": "ok", "weights_gb": weights / 1e9,
                   "weights_gb_before_ptq": bf16_bytes / 1e9, **ptq, "kv_cache_gb": res.kv_cache_bytes / 1e9,
                   "kv_packed_gb": res.kv_packed_bytes / 1e9, "chunk_ms": [round(x, 1) for x in res.stats.chunk_ms],
                   **res.stats.summary(), **peaks(dev), "timing_definition": res.stats.timing_definition,
                   "quant_kernels": active_kernels()}
            if ref_lat is None:
                ref_lat = lat
            row["latent_rel_err_vs_ref"] = latent_rel_err(lat, ref_lat)
            if vae is not None:
                fr = _frames(vae, lat[:, :, :decode_latents])
                ref_frames = fr if ref_frames is None else ref_frames
                row["psnr_vs_ref"] = psnr(fr[0], ref_frames[0])
                row["psnr_frames"] = fr.shape[1]
            rows.append(row)
            print(f"{prec:>12} kv={kv:<5} weights {row['weights_gb']:.2f} GB, KV {row['kv_cache_gb']:.2f} GB "
                  f"(packed {row['kv_packed_gb']:.2f}), median chunk {row['chunk_ms_median']:.0f} ms, "
                  f"{row['denoise_fps']:.2f} FPS, peak {row['peak_allocated_gb'] or 0:.1f} GB, rel.err "
                  f"{row['latent_rel_err_vs_ref']:.4f}, PSNR {row.get('psnr_vs_ref', float('nan')):.2f}", flush=True)
        del model
    config = {"preset": preset, "chunks": chunks, "steps": steps, "precisions": precisions, "kv": kvs,
              "device": device, "seed": seed, "decode_latents": decode_latents, "attn": attn, "weights": "random",
              "reference": f"{precisions[0]} / kv={kvs[0]}"}
    return {"rows": rows, "manifest": manifest(config, seed)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wan2.2-ti2v-5b")
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp8", "nvfp4"])
    ap.add_argument("--kv", nargs="+", default=["none", "fp8", "nvfp4"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-latents", type=int, default=0, help="latents decoded for PSNR (0: skip the VAE)")
    ap.add_argument("--attn", default="auto")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    result = run(a.preset, a.chunks, a.steps, a.precisions, a.kv, a.device, a.seed, a.decode_latents, a.attn)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
