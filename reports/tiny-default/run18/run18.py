"""run18: run16's recipe with block timesteps drawn with σ uniform (TrainConfig.timestep_density = "sigma")."""
import sys
from pathlib import Path

import longlive.train.tiny as T

T.TINY_TIMESTEP_DENSITY = "sigma"
T.train_tiny(Path(sys.argv[1]), minutes=14.0, seed=0)
