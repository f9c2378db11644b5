"""GalaxyFlow: an ensemble of CNF pairs p(r)·p(v|r) behind the upsampler interface.

The ensemble machinery (mean density, a uniformly chosen member per star, densities in
physical units through the preprocessing of eqs. 9–11) lives in
:class:`gflow_dist.flows.ensemble.FlowEnsemble`; this kind supplies the CNF of §3.2.

References:
    arXiv:2211.11765, §3.2–3.3.
"""

from __future__ import annotations

from dataclasses import replace

from gflow_dist.config import RunConfig
from gflow_dist.flows.ensemble import FlowEnsemble
from gflow_dist.flows.member import CNFArchitecture, FlowObjective


class CNFUpsampler(FlowEnsemble):
    """The paper's CNF ensemble (kind ``cnf``). See :class:`FlowEnsemble` for the arguments."""

    kind = "cnf"
    config_sections = ("cnf",)
    architecture_type = CNFArchitecture

    @classmethod
    def from_config(cls, config: RunConfig) -> CNFUpsampler:
        cnf = config.cnf
        return cls(
            config.galaxy.sun_position_kpc, config.galaxy.r_max_kpc,
            CNFArchitecture(cnf.hidden_layers, cnf.hidden_units, cnf.solver_steps, cnf.stage_times),
            replace(cnf.to_recipe(), compile=cnf.compile),
            cnf.ensemble_size, cnf.validation_fraction, cnf.max_train_particles,
            FlowObjective(cnf.objective, cnf.likelihood_finetune_epochs),
        )
