"""x0-prediction vs σ: held-out real clips noised to one σ, clean context (teacher-forcing layout); shape match of
blocks 1-3 per prompted shape. Usage: python denoise_vs_sigma.py WEIGHTS_DIR [CLIPS]
Held-out clips come from the current TinyRecipe().task; session 6's numbers were taken with run16's (no speed or
start_spread narrowing)."""
import sys
from pathlib import Path

import torch

from longlive.eval.shapes import named_shape, shape_match
from longlive.model.checkpoint import load_generator
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.text import build_text_encoder
from longlive.train.data import COLOURS, ProceduralVideos, uint8_to_video
from longlive.train.teacher_forcing import _tf_attention, predicted_x0, sigma_table
from longlive.train.tiny import TinyRecipe
from longlive.vae import load_vae

TINY_TASK = TinyRecipe().task

w = Path(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 12
torch.manual_seed(0)
cfg = get_preset("tiny")
model = build_model(cfg, seed=0)
load_generator(model, w / "model_bf16.pt")
model.eval()
vae = load_vae("tiny-pca", w / "vae.safetensors")
text = build_text_encoder("tiny", checkpoint=w / "text_encoder.safetensors", device="cpu")
gen = ProceduralVideos(cfg.height, cfg.width, cfg.fps, seed=0, **TINY_TASK)
grey = torch.tensor(COLOURS["grey"])
sig, ts = sigma_table()
F = 8
res = {}
for target in [0.05, 0.2, 0.4, 0.6, 0.8, 0.95]:
    idx = int((sig - target).abs().argmin())
    per = {"circle": [], "square": [], "triangle": []}
    for i in range(n):
        frames, cap, meta = gen.clip(40_000 + i, 1 + 4 * (F - 1))
        kind = named_shape(cap)
        x0 = vae.encode(uint8_to_video(frames)[None]).float()
        emb = text.encode([cap]).float()
        g = torch.Generator().manual_seed(i)
        noise = torch.randn(x0.shape, generator=g)
        s = sig[idx]
        t_seq = torch.cat([torch.zeros(F), torch.full((F,), float(ts[idx]))])[None]
        x_t = (1 - s) * x0 + s * noise
        with torch.no_grad():
            out = model(torch.cat([x0, x_t], 2), t_seq, emb, frame_positions=list(range(F)) * 2,
                        attn_fn=_tf_attention(F, 16, cfg.chunk_frames, "dense"),
                        frame_prompt=torch.zeros(2 * F, dtype=torch.long))
        x0h = predicted_x0(x_t, out[:, :, F:], torch.full((F,), float(s)))
        # keep clean frame 0..1 (first block) out: use blocks 1..3 (latents 2..7 -> pixel frames 5..)
        vid = vae.decode(x0h)[0]
        u8 = ((vid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0)
        per[kind].append(shape_match(u8[5:], kind, grey))
    res[round(float(s), 3)] = {k: round(sum(v) / max(len(v), 1), 3) for k, v in per.items()}
    print(round(float(s), 3), res[round(float(s), 3)], flush=True)
