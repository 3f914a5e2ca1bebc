"""Measurement: what a model costs (``summary``: params, MACs, shapes, what separable convs
save) and how fast it runs (``benchmark``: timings against timm, the roofline, profiles)."""
from .summary import ModelSummary, summarize

__all__ = ["ModelSummary", "summarize"]
