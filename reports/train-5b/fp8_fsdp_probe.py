"""FP8 vs BF16 training memory under FSDP2 (the Table 1 setting minus SP): torchrun on 4 GPUs, the 5B block shapes at
LAYERS layers (default 4), teacher forcing on 24 latent frames per rank, activation checkpointing, FSDP2 with BF16
params. Rank 0 prints memory after forward and the peak through backward for each recipe."""

import json
import os
import sys

import torch
import torch.distributed as dist

from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.train.teacher_forcing import sample_t_index, teacher_forcing_loss
from longlive.train.trainer import apply_activation_checkpointing, apply_fsdp, prepare_precision

rank = int(os.environ["RANK"])
dev = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
torch.cuda.set_device(dev)
dist.init_process_group("nccl", device_id=dev)
mc = get_preset("wan2.2-ti2v-5b").with_overrides(num_layers=int(os.environ.get("LAYERS", "4")))
frames = 24
h, w = mc.latent_hw
rows = []
for precision in ("bf16", "fp8"):
    torch.cuda.empty_cache()
    model = build_model(mc, device=dev, seed=0)
    prepare_precision(model, precision)
    apply_activation_checkpointing(model)
    apply_fsdp(model, None, param_dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(rank)
    x0 = torch.randn(1, mc.in_channels, frames, h, w, generator=g).to(dev)
    pe = torch.randn(1, mc.text_len, mc.text_dim, generator=g).to(dev)
    fp = torch.zeros(frames, dtype=torch.long)
    noise = torch.randn(x0.shape, generator=g).to(dev)
    t_index = sample_t_index(frames // mc.chunk_frames, g)
    for it in range(2):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 1e9
        torch.cuda.reset_peak_memory_stats()
        loss = teacher_forcing_loss(model, x0, pe, fp, noise=noise, t_index=t_index, attn="flex")
        torch.cuda.synchronize()
        after_fwd = torch.cuda.memory_allocated() / 1e9 - base
        loss.backward()
        torch.cuda.synchronize()
        row = {"precision": precision, "iter": it, "layers": mc.num_layers, "resident_gb": base,
               "after_forward_gb": after_fwd, "peak_gb": torch.cuda.max_memory_allocated() / 1e9 - base,
               "after_backward_gb": torch.cuda.memory_allocated() / 1e9 - base}
        model.zero_grad(set_to_none=True)
        if rank == 0:
            print(json.dumps(row), flush=True)
        rows.append(row)
    del model, loss
if rank == 0:
    json.dump(rows, open(sys.argv[1], "w"), indent=2)
dist.destroy_process_group()
