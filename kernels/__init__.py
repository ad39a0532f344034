"""Custom kernels (Triton on GPU, fast PyTorch on CPU), installed as `minibridge.kernels`."""
