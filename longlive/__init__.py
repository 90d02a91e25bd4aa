"""longlive: a benchmarking and reproducibility harness for long autoregressive video generation."""

__version__ = "0.1.0"
