"""Re-run the tiny default's evaluation (longlive.train.tiny._evaluate, as of this commit) on finished weights,
e.g. after a metric was added: `python reevaluate.py WEIGHTS_DIR OUT_JSON [SPEED_LO SPEED_HI]`.

WEIGHTS_DIR must hold model_bf16.pt, vae.safetensors, text_encoder.safetensors (and model_2step.pt for the 2-step
row); samples are written under it. Real clips come from the current TinyRecipe().task, with the speed given (the
one the weights were trained at), so their motion is the reference for those weights.
"""
import json
import sys
from pathlib import Path

import torch

import longlive.train.tiny as T
from longlive.eval.shapes import centroid_travel
from longlive.train.data import COLOURS, ProceduralVideos

w, out = Path(sys.argv[1]), Path(sys.argv[2])
task = dict(T.TinyRecipe().task)
if len(sys.argv) > 4:
    task["speed"] = (float(sys.argv[3]), float(sys.argv[4]))
gen = ProceduralVideos(128, 128, 24, seed=0, **task)
grey = torch.tensor(COLOURS["grey"])
real = [centroid_travel(gen.clip(20_000 + i, 61)[0], grey) for i in range(12)]
palette = torch.tensor(list(COLOURS.values()), dtype=torch.uint8)
res = {"task": {k: list(v) if isinstance(v, tuple) else v for k, v in task.items()},
       "real_centroid_travel_px": sum(real) / len(real), "eval": T._evaluate(w, palette)}
out.write_text(json.dumps(res, indent=1))
print("real", round(res["real_centroid_travel_px"], 1))
for name, row in res["eval"].items():
    print(f"{name:32s} travel {row['centroid_travel_px']:.1f} px  shape {row['shape_match']:.2f}  "
          f"iou {row['shape_iou']:.2f}  colour {row['prompt_colour_match']:.2f}")
