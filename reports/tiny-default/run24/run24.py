"""run24: run22 with faster shapes (0.15-0.35 sides/s) that all start at the centre (start_spread 0)."""
import sys
from pathlib import Path

import longlive.train.tiny as T

T.TINY_TASK = {**T.TINY_TASK, "speed": (0.15, 0.35), "start_spread": 0.0}
print(T.TINY_TASK, flush=True)
T.train_tiny(Path(sys.argv[1]), minutes=14.0, seed=0)
