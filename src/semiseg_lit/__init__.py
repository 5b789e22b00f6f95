"""semiseg_lit: semi-supervised semantic segmentation with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
