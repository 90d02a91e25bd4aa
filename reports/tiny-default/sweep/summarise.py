"""Table and plot of the tiny-default sweep: one row per variant from each round's tiny_eval.json.

    python reports/tiny-default/sweep/summarise.py    # writes summary.csv and shape_match.png beside this file
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).parent
RUNS = {"4-step": "4step", "2-step (LoRA)": "2step", "4-step NVFP4 W4A4 + NVFP4 KV": "nvfp4"}
KINDS = ("circle", "square", "triangle")


def rows() -> list[dict]:
    out = []
    for path in sorted(HERE.glob("round*/*/tiny_eval.json")):
        ev = json.loads(path.read_text())
        var = json.loads((path.parent / "variant.json").read_text())
        task = var.get("task", {})
        row = {"round": path.parent.parent.name, "variant": path.parent.name, "seed": var.get("seed", 0),
               "start_spread": task.get("start_spread", 1.0), "speed": str(tuple(task.get("speed", (0.25, 0.75)))),
               "radius": str(tuple(task.get("radius", (0.26, 0.32)))),
               "preset": json.dumps(var.get("preset", {})), "ar_steps": ev["ar_steps"]}
        for name, tag in RUNS.items():
            res = ev["eval"].get(name)
            if res is None:
                continue
            row[f"colour_{tag}"] = res["prompt_colour_match"]
            row[f"shape_{tag}"] = res["shape_match"]
            row[f"iou_{tag}"] = res["shape_iou"]
            if tag == "4step":
                row.update({f"shape_4step_{k}": v for k, v in zip(KINDS, res["per_prompt"]["shape_match"],
                                                                   strict=True)})
        out.append(row)
    return out


def main() -> None:
    df = pd.DataFrame(rows())
    df.to_csv(HERE / "summary.csv", index=False, float_format="%.3f")
    cols = ["round", "variant", "seed", "start_spread", "speed", "ar_steps", "colour_4step", "shape_4step",
            "shape_2step", "shape_nvfp4", "iou_4step"]
    print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    base = df[(df["preset"] == "{}") & (df["radius"] == "(0.26, 0.32)")]  # tiny preset shapes, run16's radius
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, (metric, label) in zip(axes, (("shape_4step", "shape match, 4-step"), ("iou_4step", "IoU, 4-step")),
                                   strict=True):
        for speed, grp in base.groupby("speed"):
            ax.scatter(grp["start_spread"], grp[metric], label=f"speed {speed} sides/s", alpha=0.8)
        ax.set_xlabel("start_spread (share of the free range)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].axhline(1 / 3, color="grey", ls=":", lw=1)
    axes[0].legend(fontsize=8)
    fig.suptitle("tiny-default sweep on the device CPU (2 cores per variant, 8 min budget, one seed per point)")
    fig.tight_layout()
    fig.savefig(HERE / "shape_match.png", dpi=110)


if __name__ == "__main__":
    main()
