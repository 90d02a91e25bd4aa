"""Continue a real clean first chunk: does the model keep the shape it is shown? Shape match of the generated second
chunk per shape. Usage: python continue_real_chunk.py WEIGHTS_DIR STEPS SHIFT
Held-out clips come from the current TinyRecipe().task; session 6's numbers were taken with run16's (no speed or
start_spread narrowing)."""
import sys
from pathlib import Path

import torch

from longlive.eval.shapes import named_shape, shape_iou, shape_match
from longlive.infer.scheduler import make_scheduler
from longlive.model.checkpoint import load_generator
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.text import build_text_encoder
from longlive.train.data import COLOURS, ProceduralVideos, uint8_to_video
from longlive.train.teacher_forcing import MaskedAttention, tf_mask_mod
from longlive.train.tiny import TinyRecipe
from longlive.vae import load_vae

TINY_TASK = TinyRecipe().task

w = Path(sys.argv[1])
cfg = get_preset("tiny")
model = build_model(cfg, seed=0).eval().requires_grad_(False)
load_generator(model, w / "model_bf16.pt")
text = build_text_encoder("tiny", checkpoint=w / "text_encoder.safetensors", device="cpu")
vae = load_vae(cfg.vae, w / "vae.safetensors")
grey = torch.tensor(COLOURS["grey"])
gen = ProceduralVideos(128, 128, 24, seed=0, **TINY_TASK)
F = 4
tpf = 16
masked = MaskedAttention(tf_mask_mod(F, tpf, 2), 2 * F * tpf, "dense", cache_key=("natural", F, tpf, 2))
res = {}
for i in range(24):
    frames, cap, _ = gen.clip(40000 + i, 13)
    kind = named_shape(cap)
    with torch.no_grad():
        x0 = vae.encode(uint8_to_video(frames)[None] if uint8_to_video(frames).dim() == 4 else uint8_to_video(frames))
    emb = text.encode([cap]).float()
    x = torch.randn(1, cfg.in_channels, 2, 8, 8, generator=torch.Generator().manual_seed(i))
    sch = make_scheduler("unipc", int(sys.argv[2]), float(sys.argv[3]))
    for t in sch.timesteps:
        seq = torch.cat([x0, x0[:, :, :2], x], dim=2)
        tt = torch.tensor([[0.0] * 4 + [0.0, 0.0, float(t), float(t)]])
        with torch.no_grad():
            v = model(seq, tt, emb, frame_positions=list(range(F)) * 2, attn_fn=lambda q, k, v, layer: masked(q, k, v))
        x, _ = sch.step(v[:, :, 6:8], x)
    with torch.no_grad():
        vid = vae.decode(torch.cat([x0[:, :, :2], x], dim=2).float())
    f = ((vid[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[5:]  # frames of chunk 1
    res.setdefault(kind, []).append((shape_match(f, kind, grey), shape_iou(f, kind, grey)))
for k, v in res.items():
    match, iou = sum(a for a, _ in v) / len(v), sum(b for _, b in v) / len(v)
    print(k, len(v), "shape_match", round(match, 3), "iou", round(iou, 3))
