"""Stochastic depth. timm's DropPath is the reference everyone trains with; the zoo uses it unchanged."""
from timm.layers import DropPath, drop_path

__all__ = ["DropPath", "drop_path"]
