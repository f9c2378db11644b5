"""Preprocessing of the paper, eqs. 9–11."""
from gflow_dist.preprocess.transforms import Preprocessor, ball_to_space, space_to_ball

__all__ = ["Preprocessor", "ball_to_space", "space_to_ball"]
