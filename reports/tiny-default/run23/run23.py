"""run23: run22 with faster shapes (0.15-0.35 sides/s), for visible motion."""
import sys
from pathlib import Path

from longlive.train.tiny import TinyRecipe, train_tiny

recipe = TinyRecipe(speed=(0.15, 0.35), start_spread=0.15)  # run22 (start_spread 0.15) with faster shapes
print(recipe, flush=True)
train_tiny(Path(sys.argv[1]), minutes=14.0, seed=0, recipe=recipe)
