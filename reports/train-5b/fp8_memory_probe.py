"""Where does FP8 training memory go? One GPU, the 5B block shapes at 2 layers, teacher forcing on 24 latent frames
(42,240 tokens: one Balanced-SP rank's share of 96 latents at sp = 4), activation checkpointing on every block,
BF16 weights. Prints torch memory after forward and the peak through backward, for BF16 and the FP8 recipe."""

import json
import sys

import torch

from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.train.teacher_forcing import sample_t_index, teacher_forcing_loss
from longlive.train.trainer import apply_activation_checkpointing, prepare_precision

dev = torch.device("cuda")
mc = get_preset("wan2.2-ti2v-5b").with_overrides(num_layers=2)
frames = 24
h, w = mc.latent_hw
rows = []
for precision in ("bf16", "fp8"):
    for ac in (True, False):
        torch.cuda.empty_cache()
        model = build_model(mc, device=dev, dtype=torch.bfloat16, seed=0)
        prepare_precision(model, precision)
        model = model.to(torch.bfloat16) if precision == "bf16" else model
        if ac:
            apply_activation_checkpointing(model)
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(1, mc.in_channels, frames, h, w, generator=g).to(dev, torch.bfloat16)
        pe = torch.randn(1, mc.text_len, mc.text_dim, generator=g).to(dev, torch.bfloat16)
        fp = torch.zeros(frames, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=g).to(dev, torch.bfloat16)
        t_index = sample_t_index(frames // mc.chunk_frames, g)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 1e9
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = teacher_forcing_loss(model, x0, pe, fp, noise=noise, t_index=t_index, attn="flex")
        torch.cuda.synchronize()
        after_fwd = torch.cuda.memory_allocated() / 1e9 - base
        fwd_peak = torch.cuda.max_memory_allocated() / 1e9 - base
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 1e9 - base
        row = {"precision": precision, "ac": ac, "weights_gb": base, "after_forward_gb": after_fwd,
               "forward_peak_gb": fwd_peak, "peak_gb": peak}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model, loss, x0, noise
json.dump(rows, open(sys.argv[1], "w"), indent=2)
