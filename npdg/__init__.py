"""npdg — NPDG (Luo, Liu & Yang, IJCV 2024): domain generalization for semantic segmentation via
network pruning. The engine is plain PyTorch and never imports streamlit."""

__version__ = "0.1.0"
