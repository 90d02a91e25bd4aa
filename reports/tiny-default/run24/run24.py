"""run24: run22 with faster shapes (0.15-0.35 sides/s) that all start at the centre (start_spread 0)."""
import sys
from pathlib import Path

from longlive.train.tiny import TinyRecipe, train_tiny

recipe = TinyRecipe(speed=(0.15, 0.35), start_spread=0.0)  # the defaults since run24
print(recipe, flush=True)
train_tiny(Path(sys.argv[1]), minutes=14.0, seed=0, recipe=recipe)
