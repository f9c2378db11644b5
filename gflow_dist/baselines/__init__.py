"""Kernel-smoothing baselines: the paper's simplified EnBiD, the real EnBiD with Ananke's
kernels, and an MLE-tuned adaptive KDE."""
