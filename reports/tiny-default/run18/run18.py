"""run18: run16's recipe with block timesteps drawn with σ uniform (TrainConfig.timestep_density = "sigma")."""
import sys
from pathlib import Path

from longlive.train.tiny import TinyRecipe, train_tiny

# run16's task (colour_change 0, start anywhere, the data generator's default speed) with σ-uniform timesteps
run16 = {"speed": (0.25, 0.75), "start_spread": 1.0}
train_tiny(Path(sys.argv[1]), minutes=14.0, seed=0, recipe=TinyRecipe(**run16, timestep_density="sigma"))
