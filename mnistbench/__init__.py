"""mnistbench: replicate the classic MNIST results of Nielsen's book and the PyTorch articles."""

__version__ = "0.1.0"
