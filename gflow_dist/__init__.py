"""gflow-dist: upsample star particles of N-body galaxy simulations into star catalogs.

The method is GalaxyFlow (arXiv:2211.11765): continuous normalizing flows for the
phase-space density p(r)·p(v|r) of the star particles around the Sun.
"""

__version__ = "0.1.0"
