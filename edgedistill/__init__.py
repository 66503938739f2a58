"""edgedistill: self-supervised ViT teacher -> ViT-Tiny student -> exported, gated and benchmarked on the edge."""

__version__ = "0.1.0"
