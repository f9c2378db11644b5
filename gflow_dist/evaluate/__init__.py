"""Scoring upsamplers: truth-based scores (and, later, the classifier tests)."""
