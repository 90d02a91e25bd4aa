"""run17: the shipped recipe with the tiny preset at 4 layers (the spec allows 2–4)."""
import dataclasses
import sys
from pathlib import Path

import longlive.model.presets as P
import longlive.train.tiny as T

P.PRESETS["tiny"] = dataclasses.replace(P.PRESETS["tiny"], num_layers=4)
T.train_tiny(Path(sys.argv[1]), minutes=14.0, seed=0)
