"""Drawing stars from fitted upsamplers, restricted to the selection window."""
from gflow_dist.sample.window import DrawStats, SelectionWindow, draw_in_window

__all__ = ["DrawStats", "SelectionWindow", "draw_in_window"]
