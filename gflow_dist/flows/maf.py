"""The MAF upsampler: masked autoregressive flows p(r)·p(v|r) (paper Appendix A), via zuko.

Each member is a pair of zuko MAFs (Papamakarios et al. 2017) on the same preprocessed
space as the CNF (eqs. 9–11): p(r) with 3 features, and p(v|r) with 3 features and the 3
preprocessed position coordinates as context. Every transform is an affine autoregressive
layer whose shift and log-scale come from a masked MLP (MADE) of ``hidden_layers`` ×
``hidden_units`` ReLU units; the feature order flips between transforms. Members train
with the CNF's recipe (paper §3.3) and form the same equally weighted ensemble.

References:
    arXiv:2211.11765, Appendix A; arXiv:1705.07057 (MAF).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from gflow_dist.config import RunConfig
from gflow_dist.errors import GflowError
from gflow_dist.flows.ensemble import FlowEnsemble

INSTALL_HINT = "install the optional extra: pip install 'gflow-dist[flows]'"


class MaskedFlow(nn.Module):
    """One MAF, optionally conditional: p(y) or p(y | c), with an N(0, I) base.

    zuko's transform maps data to the base, so ``log_prob`` is one masked pass and
    ``transform`` (base to data) inverts it autoregressively, ``dim`` passes per layer.

    Args:
        dim: dimension of y (3 for positions or velocities).
        context_dim: dimension of the conditioning c (3 for p(v|r), 0 for p(r)).
        transforms: autoregressive layers.
        hidden_layers, hidden_units: the masked MLP of each layer.
    """

    def __init__(self, dim: int, context_dim: int, transforms: int, hidden_layers: int,
                 hidden_units: int) -> None:
        super().__init__()
        try:
            import zuko
        except ImportError as err:
            raise GflowError(f"the MAF upsampler (kind 'maf') needs zuko ({err}); "
                             f"{INSTALL_HINT}") from None
        self.flow = zuko.flows.MAF(dim, context_dim, transforms=transforms,
                                   hidden_features=[hidden_units] * hidden_layers)

    def log_prob(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(y | c) in the flow's own (preprocessed) space, shape (B,)."""
        return self.flow(context).log_prob(y)

    def transform(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Push standard-normal draws z (B, dim) to data space, one row per context row."""
        return self.flow(context).transform.inv(z)


@dataclass(frozen=True)
class MAFArchitecture:
    """The MAF's shape: ``transforms`` affine MADE layers of hidden_layers × hidden_units."""

    transforms: int = 5
    hidden_layers: int = 2
    hidden_units: int = 128

    def build(self, context_dim: int) -> MaskedFlow:
        """A fresh 3-D MAF, conditioned on ``context_dim`` extra inputs."""
        return MaskedFlow(3, context_dim, self.transforms, self.hidden_layers,
                          self.hidden_units)


class MAFUpsampler(FlowEnsemble):
    """An ensemble of MAF pairs (kind ``maf``; paper Appendix A). See :class:`FlowEnsemble`."""

    kind = "maf"
    config_sections = ("maf",)
    architecture_type = MAFArchitecture
    compilable = False
    flow_matchable = False

    @classmethod
    def from_config(cls, config: RunConfig) -> MAFUpsampler:
        maf = config.maf
        return cls(
            config.galaxy.sun_position_kpc, config.galaxy.r_max_kpc,
            MAFArchitecture(maf.transforms, maf.hidden_layers, maf.hidden_units),
            maf.to_recipe(),
            maf.ensemble_size, maf.validation_fraction, maf.max_train_particles,
        )
