"""A seeded, Milky-Way-like mock star-particle galaxy whose phase-space density is exact.

The mock is a test bed for the upsamplers: its star particles can be drawn in any number
and, unlike a simulation, its density p(x, v) is known in closed form, so a fitted model
can be scored against the truth (log-likelihood, KL divergence, entropy).

Conventions follow :mod:`gflow_dist.data.particles`: Galactocentric Cartesian, disk in the
xy plane, the Sun on the −x axis, z out of the disk, and the local disk motion along +y.
The rotation direction at (x, y) is φ̂ = (y/R, −x/R, 0), so the circular velocity at the
Sun (−8, 0) is (0, +v_c, 0). Positions are in kpc, velocities in km/s, masses in M☉.
Only the sphere of radius ``r_max_kpc`` about the Sun (the selection window) is modelled.

The density is the mixture

    p(x, v) = Σ_k w_k · ρ_k(x) / Z_k · N(v; μ_k(x), Σ_k(x))   inside the sphere, 0 outside,

where w_k is the fraction of the stars *inside the sphere* in component k, ρ_k the
component's unnormalised spatial density, Z_k = ∫_sphere ρ_k d³x, and N an untruncated
Gaussian whose mean and axis-aligned dispersions are given in cylindrical (v_R, v_φ, v_z)
and rotated to Cartesian, Σ = M diag(σ²) Mᵀ with M = [R̂ φ̂ ẑ]. Each term integrates to
w_k exactly, so the density is exact up to the quadrature error of Z_k, which is analytic
in the quadrature variables and converges geometrically (relative error far below 1e-9).

The components are labelled (:data:`COMPONENT_NAMES`): two disks, a Hercules-like moving
group, a stellar halo and a cold stellar stream, fine structure that an upsampler should
keep. The stream is a straight tube through the sphere, ρ = exp(−d⊥²/2w²) with d⊥ the
distance from its axis, whose stars move along the axis with a small isotropic
dispersion; its Z is a 2-D Gauss–Hermite quadrature of the chord lengths across the tube.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

from gflow_dist.data.particles import ParticleSet
from gflow_dist.errors import ConfigError

QUADRATURE_NODES = (64, 48, 64)
"""Default Gauss–Legendre / trapezoid node counts (height, in-plane radius, azimuth)."""

STREAM_QUADRATURE_NODES = 48
"""Gauss–Hermite nodes per transverse axis of the stream's normaliser."""

STREAM_MARGIN_WIDTHS = 8.0
"""The stream's axis must pass this many widths inside the sphere (exact quadrature)."""

COMPONENT_NAMES = ("thin_disk", "thick_disk", "moving_group", "halo", "stream")
"""The labelled components, in mixture order; those of zero weight are left out."""

_BATCH_MAX = 2_000_000
_VECTOR_SIZES = {"sun_position_kpc": 3, "thin_disk_dispersions_kms": 3,
                 "thick_disk_dispersions_kms": 3, "moving_group_velocity_offset_kms": 2,
                 "stream_point_kpc": 3, "stream_direction": 3}
_SIGNED = {"sun_position_kpc", "moving_group_velocity_offset_kms", "halo_rotation_kms",
           "thin_disk_asymmetric_drift_kms", "thick_disk_asymmetric_drift_kms",
           "stream_point_kpc", "stream_direction"}
_MAY_BE_INFINITE = {"thin_disk_dispersion_scale_kpc", "thick_disk_dispersion_scale_kpc"}


class _Component(NamedTuple):
    """One disk-like or halo component. ``height`` is None for the spherical halo."""

    name: str
    weight: float
    length: float  # disk scale length R_d, or halo core radius r_core [kpc]
    height: float | None  # disk sech² scale height z0 [kpc]
    slope: float  # halo density power-law index (unused by disks)
    mean_cyl: tuple[float, float, float]  # (v_R, v_φ, v_z) mean [km/s]
    sigma_sun: tuple[float, float, float]  # (σ_R, σ_φ, σ_z) at the Sun's radius [km/s]
    sigma_scale: float  # e-folding length of the dispersions in R [kpc]; inf = constant


class _Stream(NamedTuple):
    """The cold stream: a Gaussian tube about a straight axis, moving along it."""

    name: str
    weight: float
    point: np.ndarray  # a point on the axis [kpc]
    axis: np.ndarray  # unit vector along the axis and the mean motion
    across: np.ndarray  # (2, 3) unit vectors perpendicular to the axis and each other
    width: float  # Gaussian σ across the axis [kpc]
    velocity: np.ndarray  # mean velocity [km/s]
    dispersion: float  # isotropic velocity dispersion [km/s]


@dataclass(frozen=True)
class MockGalaxy:
    """Mixture of thin and thick disks, a Hercules-like moving group, a halo and a stream.

    Disks (and the moving group, which shares the thin disk's spatial distribution) have
    ρ ∝ exp(−R/R_d)·sech²(z/z0) and velocities with mean (0, v_c − drift, 0) in (v_R, v_φ,
    v_z) and dispersions σ(R) = σ_⊙·exp(−(R − R_⊙)/R_σ), R_⊙ the Sun's cylindrical radius.
    The halo has ρ ∝ (r² + r_core²)^(−slope/2) with r the Galactocentric radius, and an
    isotropic Gaussian velocity of mean (0, v_rot, 0). The cold stream is a tube of
    Gaussian width w about a straight axis through the sphere, uniform along it, whose
    stars move along the axis at a fixed speed with an isotropic dispersion of a few km/s.
    Weights are the fractions of the stars inside the selection sphere and must sum to 1;
    a zero weight drops a component.

    Attributes:
        sun_position_kpc: Galactocentric position of the Sun (centre of the sphere) [kpc].
        r_max_kpc: radius of the selection sphere [kpc]; must be smaller than the Sun's
            distance from the rotation (z) axis, so the sphere excludes the Galactic centre.
        circular_velocity_kms: flat circular velocity v_c [km/s].
        thin_disk_weight: in-sphere fraction of thin-disk stars.
        thin_disk_scale_length_kpc: thin-disk exponential scale length R_d [kpc].
        thin_disk_scale_height_kpc: thin-disk sech² scale height z0 [kpc].
        thin_disk_dispersions_kms: thin-disk (σ_R, σ_φ, σ_z) at the Sun's radius [km/s].
        thin_disk_dispersion_scale_kpc: e-folding length of thin-disk dispersions [kpc]
            (``math.inf`` keeps them constant).
        thin_disk_asymmetric_drift_kms: thin-disk lag behind v_c [km/s].
        thick_disk_weight: in-sphere fraction of thick-disk stars.
        thick_disk_scale_length_kpc: thick-disk scale length [kpc].
        thick_disk_scale_height_kpc: thick-disk sech² scale height [kpc].
        thick_disk_dispersions_kms: thick-disk (σ_R, σ_φ, σ_z) at the Sun's radius [km/s].
        thick_disk_dispersion_scale_kpc: e-folding length of thick-disk dispersions [kpc].
        thick_disk_asymmetric_drift_kms: thick-disk lag behind v_c [km/s].
        moving_group_weight: in-sphere fraction of moving-group stars.
        moving_group_velocity_offset_kms: (v_R, v_φ) offset of the moving group from the
            thin-disk mean [km/s]; the default (+30, −50) is Hercules, (U, V) ≈ (−30, −50)
            with U = −v_R toward the Galactic centre.
        moving_group_dispersion_kms: isotropic velocity dispersion of the moving group [km/s].
        halo_weight: in-sphere fraction of halo stars.
        halo_core_radius_kpc: halo core radius r_core [kpc].
        halo_density_slope: power-law index of the halo density at r ≫ r_core.
        halo_dispersion_kms: isotropic halo velocity dispersion [km/s].
        halo_rotation_kms: mean halo v_φ [km/s].
        stream_weight: in-sphere fraction of stream stars (0.2 %: about 200 particles of
            the 10⁵ a simulation holds in the sphere).
        stream_point_kpc: a Galactocentric point on the stream's axis [kpc].
        stream_direction: direction of the axis and of the stream's motion (normalised).
        stream_width_kpc: Gaussian σ of the stream across its axis [kpc].
        stream_speed_kms: mean speed along the axis [km/s]; the default moves it
            retrograde and steeply out of the plane, like a halo stream.
        stream_dispersion_kms: isotropic velocity dispersion of the stream [km/s].
    """

    sun_position_kpc: tuple[float, float, float] = (-8.0, 0.0, 0.02)
    r_max_kpc: float = 3.5
    circular_velocity_kms: float = 230.0
    thin_disk_weight: float = 0.778
    thin_disk_scale_length_kpc: float = 2.6
    thin_disk_scale_height_kpc: float = 0.3
    thin_disk_dispersions_kms: tuple[float, float, float] = (35.0, 25.0, 18.0)
    thin_disk_dispersion_scale_kpc: float = 5.2
    thin_disk_asymmetric_drift_kms: float = 5.0
    thick_disk_weight: float = 0.15
    thick_disk_scale_length_kpc: float = 2.0
    thick_disk_scale_height_kpc: float = 0.9
    thick_disk_dispersions_kms: tuple[float, float, float] = (60.0, 45.0, 40.0)
    thick_disk_dispersion_scale_kpc: float = 4.0
    thick_disk_asymmetric_drift_kms: float = 30.0
    moving_group_weight: float = 0.05
    moving_group_velocity_offset_kms: tuple[float, float] = (30.0, -50.0)
    moving_group_dispersion_kms: float = 8.0
    halo_weight: float = 0.02
    halo_core_radius_kpc: float = 1.0
    halo_density_slope: float = 3.5
    halo_dispersion_kms: float = 130.0
    halo_rotation_kms: float = 0.0
    stream_weight: float = 0.002
    stream_point_kpc: tuple[float, float, float] = (-7.6, 0.9, 0.25)
    stream_direction: tuple[float, float, float] = (0.35, -0.45, 0.82)
    stream_width_kpc: float = 0.08
    stream_speed_kms: float = 300.0
    stream_dispersion_kms: float = 3.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            name, given = spec.name, getattr(self, spec.name)
            try:
                value = np.asarray(given, dtype=np.float64)
            except (TypeError, ValueError):
                raise ConfigError(f"MockGalaxy.{name} must be numeric, got {given!r}") from None
            size = _VECTOR_SIZES.get(name)
            if value.shape != (() if size is None else (size,)):
                raise ConfigError(f"MockGalaxy.{name} must be "
                                  f"{'a number' if size is None else f'{size} numbers'}, "
                                  f"got {given!r}")
            if name in _MAY_BE_INFINITE:
                problem = None if value > 0 else "> 0 (math.inf for constant dispersions)"
            elif not np.all(np.isfinite(value)):
                problem = "finite"
            elif name.endswith("_weight"):
                problem = None if value >= 0 else ">= 0"
            else:
                problem = None if name in _SIGNED or np.all(value > 0) else "> 0"
            if problem:
                raise ConfigError(f"MockGalaxy.{name} must be {problem}, got {given!r}")
            object.__setattr__(self, name, float(value) if size is None else tuple(value.tolist()))
        weights = {f.name: getattr(self, f.name) for f in fields(self)
                   if f.name.endswith("_weight")}
        if abs(sum(weights.values()) - 1.0) > 1e-9:
            raise ConfigError(f"MockGalaxy weights {sorted(weights)} must sum to 1, "
                              f"got {sum(weights.values())}")
        if not self.r_max_kpc < self._sun_radius:
            raise ConfigError(f"MockGalaxy.r_max_kpc ({self.r_max_kpc}) must be smaller than the "
                              f"Sun's distance from the rotation axis ({self._sun_radius} kpc), "
                              "so that the sphere excludes the Galactic centre")
        if self.stream_weight > 0:
            self._check_stream()

    def _check_stream(self) -> None:
        if not np.any(self.stream_direction):
            raise ConfigError("MockGalaxy.stream_direction must not be zero")
        _, offset = self._stream_sun_coordinates(self._stream)
        reach = self.r_max_kpc - STREAM_MARGIN_WIDTHS * self.stream_width_kpc
        if not np.linalg.norm(offset) < reach:
            raise ConfigError(
                f"MockGalaxy.stream_point_kpc and stream_direction put the stream's axis "
                f"{np.linalg.norm(offset):.3g} kpc from the Sun: it must pass within "
                f"r_max_kpc − {STREAM_MARGIN_WIDTHS:g}·stream_width_kpc = {reach:.3g} kpc")

    @property
    def _sun_radius(self) -> float:
        """Cylindrical radius of the Sun [kpc]."""
        return math.hypot(self.sun_position_kpc[0], self.sun_position_kpc[1])

    @cached_property
    def _components(self) -> list[_Component]:
        v_thin = self.circular_velocity_kms - self.thin_disk_asymmetric_drift_kms
        v_thick = self.circular_velocity_kms - self.thick_disk_asymmetric_drift_kms
        d_r, d_phi = self.moving_group_velocity_offset_kms
        components = [
            _Component("thin_disk", self.thin_disk_weight, self.thin_disk_scale_length_kpc,
                       self.thin_disk_scale_height_kpc, 0.0, (0.0, v_thin, 0.0),
                       self.thin_disk_dispersions_kms, self.thin_disk_dispersion_scale_kpc),
            _Component("thick_disk", self.thick_disk_weight, self.thick_disk_scale_length_kpc,
                       self.thick_disk_scale_height_kpc, 0.0, (0.0, v_thick, 0.0),
                       self.thick_disk_dispersions_kms, self.thick_disk_dispersion_scale_kpc),
            _Component("moving_group", self.moving_group_weight, self.thin_disk_scale_length_kpc,
                       self.thin_disk_scale_height_kpc, 0.0, (d_r, v_thin + d_phi, 0.0),
                       (self.moving_group_dispersion_kms,) * 3, math.inf),
            _Component("halo", self.halo_weight, self.halo_core_radius_kpc, None,
                       self.halo_density_slope, (0.0, self.halo_rotation_kms, 0.0),
                       (self.halo_dispersion_kms,) * 3, math.inf),
        ]
        return [c for c in components if c.weight > 0]

    @cached_property
    def _stream(self) -> _Stream:
        axis = np.asarray(self.stream_direction) / np.linalg.norm(self.stream_direction)
        helper = np.eye(3)[np.argmin(np.abs(axis))]  # the basis vector least along the axis
        first = np.cross(axis, helper)
        first /= np.linalg.norm(first)
        return _Stream("stream", self.stream_weight, np.asarray(self.stream_point_kpc), axis,
                       np.stack([first, np.cross(axis, first)]), self.stream_width_kpc,
                       self.stream_speed_kms * axis, self.stream_dispersion_kms)

    @property
    def component_names(self) -> tuple[str, ...]:
        """Names of the non-empty components, in mixture order (:data:`COMPONENT_NAMES`)."""
        names = tuple(c.name for c in self._components)
        return names + (("stream",) if self.stream_weight > 0 else ())

    def _stream_sun_coordinates(self, stream: _Stream) -> tuple[float, np.ndarray]:
        """The Sun's position along the stream's axis and across it [kpc]."""
        relative = np.asarray(self.sun_position_kpc) - stream.point
        return float(relative @ stream.axis), stream.across @ relative

    @property
    def stream_velocity_kms(self) -> np.ndarray:
        """The stream's mean Galactocentric velocity (vx, vy, vz) [km/s]."""
        return self._stream.velocity

    def stream_coordinates(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (n, 3) [kpc] along the stream's axis, from the Sun's place on it, and
        their distance from the axis [kpc]: the coordinates of a stream-track plot."""
        stream = self._stream
        along_sun, _ = self._stream_sun_coordinates(stream)
        relative = np.asarray(positions) - stream.point
        across = np.linalg.norm(relative @ stream.across.T, axis=1)
        return relative @ stream.axis - along_sun, across

    def stream_log_normaliser(self, nodes: int = STREAM_QUADRATURE_NODES) -> float:
        """ln Z of the stream [kpc³]: ∫_sphere exp(−d⊥²/2w²) d³x.

        Across the axis (a, b) the sphere holds a chord of length 2√(r² − |(a, b) − c|²),
        c the Sun's offset from the axis, so Z = ∫∫ exp(−(a² + b²)/2w²) · chord da db,
        here by Gauss–Hermite quadrature in each of a and b. The chord is analytic where
        the Gaussian has weight (the axis passes ≥ 8 w inside the sphere), so the error is
        far below 1e-9.
        """
        stream = self._stream
        _, offset = self._stream_sun_coordinates(stream)
        xi, weights = np.polynomial.hermite.hermgauss(nodes)
        a = math.sqrt(2.0) * stream.width * xi
        gap2 = (a[:, None] - offset[0]) ** 2 + (a[None, :] - offset[1]) ** 2
        chord = 2.0 * np.sqrt(np.clip(self.r_max_kpc**2 - gap2, 0.0, None))
        return math.log(2.0 * stream.width**2 * float(weights @ chord @ weights))

    def log_normalisers(self, refine: int = 1) -> np.ndarray:
        """ln Z_k, Z_k = ∫_sphere ρ_k d³x [kpc³], of the non-empty components, by quadrature.

        Coordinates are cylindrical about the Sun: height h = z − z_⊙ (Gauss–Legendre in
        ξ with z = z0·sinh ξ for the disks, which puts nodes where sech² is sharp), in-plane
        radius s ∈ [0, √(r² − h²)] (Gauss–Legendre) and azimuth (periodic trapezoid rule).
        Every integrand is analytic in these variables, so the error falls geometrically.
        ``refine`` multiplies each node count (to check convergence).
        """
        n_h, n_s, n_psi = (refine * n for n in QUADRATURE_NODES)
        xs, ys, zs = self.sun_position_kpc
        r = self.r_max_kpc
        t_h, w_h = np.polynomial.legendre.leggauss(n_h)
        t_s, w_s = np.polynomial.legendre.leggauss(n_s)
        psi = 2 * np.pi * np.arange(n_psi) / n_psi
        log_z = []
        for comp in self._components:
            if comp.height is None:
                z, wz = zs + r * t_h, r * w_h
            else:
                lo, hi = np.arcsinh((zs - r) / comp.height), np.arcsinh((zs + r) / comp.height)
                xi = 0.5 * (hi + lo) + 0.5 * (hi - lo) * t_h
                z = comp.height * np.sinh(xi)
                wz = 0.5 * (hi - lo) * w_h * comp.height * np.cosh(xi)
            a = np.sqrt(np.clip(r**2 - (z - zs) ** 2, 0.0, None))[:, None]
            s = 0.5 * a * (1 + t_s)
            w = (wz[:, None] * 0.5 * a * w_s * s)[:, :, None] * (2 * np.pi / n_psi)
            x = xs + s[:, :, None] * np.cos(psi)
            y = ys + s[:, :, None] * np.sin(psi)
            zz = np.broadcast_to(z[:, None, None], x.shape)
            log_rho = self._log_density(comp, x, y, zz)
            log_z.append(logsumexp(log_rho, b=np.broadcast_to(w, x.shape)))
        return np.array(log_z)

    @cached_property
    def _log_z(self) -> np.ndarray:
        return self.log_normalisers()

    @staticmethod
    def _log_density(comp: _Component, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """log ρ_k, the unnormalised spatial density of one component."""
        if comp.height is None:
            return -0.5 * comp.slope * np.log(x**2 + y**2 + z**2 + comp.length**2)
        t = np.abs(z / comp.height)
        log_sech2 = 2.0 * (math.log(2.0) - t - np.log1p(np.exp(-2.0 * t)))
        return -np.hypot(x, y) / comp.length + log_sech2

    def _log_sigma(self, comp: _Component, radius: np.ndarray) -> np.ndarray:
        """(n, 3) log of the cylindrical dispersions at cylindrical radius ``radius``."""
        decay = (radius - self._sun_radius) / comp.sigma_scale
        return np.log(comp.sigma_sun) - decay[:, None]

    def log_prob(self, phase_space: np.ndarray) -> np.ndarray:
        """Natural-log density ln p(x, v) [ln(kpc⁻³ (km/s)⁻³)] of (n, 6) rows; −inf outside."""
        return logsumexp(self.component_log_probs(phase_space), axis=0)

    def component_log_probs(self, phase_space: np.ndarray) -> np.ndarray:
        """(K, n) ln(w_k · p_k(x, v)) of each component in :attr:`component_names` order.

        Their logsumexp over k is :meth:`log_prob`; exp(row − log_prob) is the probability
        that a star there belongs to component k. −inf outside the sphere.
        """
        ps = np.asarray(phase_space, dtype=np.float64)
        if ps.ndim != 2 or ps.shape[1] != 6:
            raise ValueError(f"phase_space must have shape (n, 6), got {ps.shape}")
        out = np.full((len(self.component_names), len(ps)), -np.inf)
        inside = np.sum((ps[:, :3] - self.sun_position_kpc) ** 2, axis=1) <= self.r_max_kpc**2
        x, y, z, vx, vy, vz = ps[inside].T
        radius = np.hypot(x, y)
        v_cyl = np.stack([(x * vx + y * vy) / radius, (y * vx - x * vy) / radius, vz], axis=1)
        for k, (comp, log_z) in enumerate(zip(self._components, self._log_z, strict=True)):
            log_sigma = self._log_sigma(comp, radius)
            chi2 = np.sum(((v_cyl - comp.mean_cyl) * np.exp(-log_sigma)) ** 2, axis=1)
            log_v = -0.5 * chi2 - np.sum(log_sigma, axis=1) - 1.5 * math.log(2 * math.pi)
            out[k, inside] = (math.log(comp.weight) - log_z + self._log_density(comp, x, y, z)
                              + log_v)
        if self.stream_weight > 0:
            out[-1, inside] = self._stream_log_prob(ps[inside])
        return out

    def _stream_log_prob(self, ps: np.ndarray) -> np.ndarray:
        """ln(w · ρ/Z · N(v; u·axis, σ²I)) of the stream at (n, 6) rows inside the sphere."""
        stream = self._stream
        across = (ps[:, :3] - stream.point) @ stream.across.T
        log_rho = -0.5 * np.sum(across**2, axis=1) / stream.width**2
        chi2 = np.sum((ps[:, 3:] - stream.velocity) ** 2, axis=1) / stream.dispersion**2
        log_v = -0.5 * chi2 - 3 * math.log(stream.dispersion) - 1.5 * math.log(2 * math.pi)
        return math.log(stream.weight) - self._stream_log_z + log_rho + log_v

    @cached_property
    def _stream_log_z(self) -> float:
        return self.stream_log_normaliser()

    def sample(self, n: int, seed: int) -> np.ndarray:
        """(n, 6) float64 exact draws of (x, y, z [kpc], vx, vy, vz [km/s]) from p.

        Component counts are multinomial in the in-sphere weights; positions are drawn
        exactly (disks: R ~ Gamma(2, R_d), φ uniform over the wedge that holds the sphere,
        z = z0·atanh(2u − 1); halo: uniform in the sphere, accepted with ρ/ρ_max) and
        rejected outside the sphere; velocities come from the Gaussian at each position.
        Rows are shuffled, and the result is a function of (n, seed) only.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = np.random.default_rng(seed)
        weights = [c.weight for c in self._components]
        weights += [self.stream_weight] if self.stream_weight > 0 else []
        counts = rng.multinomial(n, weights)
        parts = [self._sample_component(k, int(count), rng) for k, count in enumerate(counts)]
        return rng.permutation(np.concatenate(parts))

    def sample_component(self, name: str, n: int, seed: int) -> np.ndarray:
        """(n, 6) exact draws from component ``name`` alone (see :attr:`component_names`)."""
        if name not in self.component_names:
            raise ValueError(f"no component {name!r}; this galaxy has {self.component_names}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self._sample_component(self.component_names.index(name), n,
                                      np.random.default_rng(seed))

    def _sample_component(self, index: int, count: int, rng: np.random.Generator) -> np.ndarray:
        if index == len(self._components):
            return self._sample_stream(count, rng)
        comp = self._components[index]
        pos = self._sample_positions(comp, count, rng)
        x, y = pos[:, 0], pos[:, 1]
        radius = np.hypot(x, y)
        sigma = np.exp(self._log_sigma(comp, radius))
        v = comp.mean_cyl + sigma * rng.standard_normal((count, 3))
        vx = (v[:, 0] * x + v[:, 1] * y) / radius
        vy = (v[:, 0] * y - v[:, 1] * x) / radius
        return np.column_stack([pos, vx, vy, v[:, 2]])

    def _sample_stream(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Stream stars: a Gaussian offset across the axis and a uniform place along the
        chord's span, rejected outside the sphere, so positions follow ρ exactly."""
        stream, r = self._stream, self.r_max_kpc
        along_sun, _ = self._stream_sun_coordinates(stream)
        kept: list[np.ndarray] = []
        n_kept = 0
        while n_kept < n:
            m = min(_BATCH_MAX, 2 * (n - n_kept) + 100)
            along = along_sun + r * (2 * rng.random(m) - 1)
            offsets = stream.width * rng.standard_normal((m, 2))
            pos = stream.point + along[:, None] * stream.axis + offsets @ stream.across
            pos = pos[np.sum((pos - self.sun_position_kpc) ** 2, axis=1) <= r**2]
            kept.append(pos)
            n_kept += len(pos)
        positions = np.concatenate(kept)[:n] if kept else np.empty((0, 3))
        velocities = stream.velocity + stream.dispersion * rng.standard_normal((n, 3))
        return np.column_stack([positions, velocities])

    def _sample_positions(self, comp: _Component, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3) exact position draws from ρ_k restricted to the sphere, by rejection."""
        sun, r = np.asarray(self.sun_position_kpc), self.r_max_kpc
        phi_sun, half_wedge = math.atan2(sun[1], sun[0]), math.asin(r / self._sun_radius)
        kept: list[np.ndarray] = []
        n_kept, acceptance = 0, 0.1
        while n_kept < n:
            m = min(_BATCH_MAX, int(1.2 * (n - n_kept) / acceptance) + 100)
            if comp.height is None:
                direction = rng.standard_normal((m, 3))
                direction /= np.linalg.norm(direction, axis=1, keepdims=True)
                pos = sun + r * rng.random(m)[:, None] ** (1 / 3) * direction
                # ρ depends on r_gc only and peaks at the sphere's point nearest the centre.
                r_min = np.array([np.linalg.norm(sun) - r])
                log_rho_max = self._log_density(comp, r_min, np.zeros(1), np.zeros(1))
                ok = np.log(rng.random(m)) < self._log_density(comp, *pos.T) - log_rho_max
            else:
                radius = rng.gamma(2.0, comp.length, m)
                phi = phi_sun + half_wedge * (2 * rng.random(m) - 1)
                z = comp.height * np.arctanh(2 * rng.random(m) - 1)
                pos = np.column_stack([radius * np.cos(phi), radius * np.sin(phi), z])
                ok = np.sum((pos - sun) ** 2, axis=1) <= r**2
            kept.append(pos[ok])
            n_kept += int(ok.sum())
            acceptance = max(ok.mean(), 1e-3)
        return np.concatenate(kept)[:n] if kept else np.empty((0, 3))

    def particles(self, n: int, seed: int, particle_mass_msun: float = 5000.0) -> ParticleSet:
        """``n`` sampled star particles of equal mass [M☉] with their provenance."""
        if not (math.isfinite(particle_mass_msun) and particle_mass_msun > 0):
            raise ConfigError(f"particle_mass_msun must be > 0, got {particle_mass_msun}")
        return ParticleSet(
            self.sample(n, seed),
            np.full(n, float(particle_mass_msun)),
            {"source": "mock", "mock_seed": str(seed),
             "mock_parameters": json.dumps(asdict(self), sort_keys=True)},
        )
