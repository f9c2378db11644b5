"""Stellar populations on particles: Arepo GFM fields to ages and abundances, other readers,
validation of bad population columns, and the Parquet round trip."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from scipy.integrate import quad
from test_ingest import frame, galaxy, write_snapshot

from gflow_dist.data.particle_io import read_written_particles, write_particles
from gflow_dist.data.populations import ARRAY_ELEMENTS
from gflow_dist.data.readers import read_particles
from gflow_dist.errors import InputError

OMEGA_M, OMEGA_L, HUBBLE = 0.307, 0.693, 0.6777  # Auriga's Planck-2014 cosmology
SNAPSHOT_A = 1.0
GYR_S = 3.15576e16
KM_PER_MPC = 3.0856775814913673e19


def cosmic_time_gyr(a: float) -> float:
    """t(a) = ∫₀^a da' / (a' H(a')) for flat-enough ΛCDM without radiation [Gyr]."""
    hubble_per_gyr = 100.0 * HUBBLE / KM_PER_MPC * GYR_S
    curvature = 1.0 - OMEGA_M - OMEGA_L
    integrand = lambda x: 1.0 / (x * math.sqrt(OMEGA_M / x**3 + curvature / x**2 + OMEGA_L))  # noqa: E731
    return quad(integrand, 0.0, a, epsabs=1e-13, epsrel=1e-12)[0] / hubble_per_gyr


def solar_mass_ratio(element: str, log_epsilon: float, atomic_mass: float) -> float:
    return 10.0 ** (log_epsilon - 12.0) * atomic_mass / 1.008


def write_auriga_like(path, n=400, wind_rows=(3,)):
    """A snapshot whose stars have known birth scale factors and Fe, H, O, Mg, Si fractions."""
    ps, mass = galaxy(n)
    write_snapshot(path, ps, mass, a=SNAPSHOT_A, h=HUBBLE, per_dataset_units=True,
                   wind_rows=wind_rows)
    rng = np.random.default_rng(5)
    birth = rng.uniform(0.1, 0.99, n)
    birth[list(wind_rows)] = -0.3
    feh = rng.uniform(-2.5, 0.4, n)
    metals = np.zeros((n, len(ARRAY_ELEMENTS)))
    metals[:, 0] = 0.74  # H
    metals[:, ARRAY_ELEMENTS.index("Fe")] = 0.74 * solar_mass_ratio("Fe", 7.50, 55.845) * 10**feh
    for element, log_eps, weight in (("O", 8.69, 15.999), ("Mg", 7.60, 24.305),
                                     ("Si", 7.51, 28.085)):
        metals[:, ARRAY_ELEMENTS.index(element)] = 0.74 * solar_mass_ratio(element, log_eps,
                                                                           weight) * 10**feh
    with h5py.File(path, "r+") as f:
        f["Header"].attrs.update({"Omega0": OMEGA_M, "OmegaLambda": OMEGA_L})
        stars = f["PartType4"]
        del stars["GFM_StellarFormationTime"]
        stars["GFM_StellarFormationTime"] = birth
        stars["GFM_Metals"] = metals
        stars["GFM_Metallicity"] = metals[:, 2:].sum(axis=1)
        stars["GFM_InitialMass"] = stars["Masses"][()] * 1.5
        stars["GFM_InitialMass"].attrs.update(dict(stars["Masses"].attrs))
    keep = np.setdiff1d(np.arange(n), wind_rows)
    return ps[keep], mass[keep], birth[keep], feh[keep]


def test_auriga_formation_times_and_metals_become_ages_and_abundances(tmp_path):
    path = tmp_path / "snapshot_127.hdf5"
    _, mass, birth, feh = write_auriga_like(path)
    particles = read_particles(path)
    now = cosmic_time_gyr(SNAPSHOT_A)
    expected_age = np.array([now - cosmic_time_gyr(a) for a in birth])
    populations = particles.populations
    np.testing.assert_allclose(populations["age"], expected_age, rtol=0, atol=1e-6)
    np.testing.assert_allclose(populations["feh"], feh, rtol=0, atol=1e-6)
    np.testing.assert_allclose(populations["alpha_fe"], 0.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(populations["mass_initial"], 1.5 * mass, rtol=1e-12)
    assert float(particles.provenance["universe_age_gyr"]) == pytest.approx(now, abs=1e-6)
    assert "Asplund" in particles.provenance["solar_abundances"]


def test_auriga_without_metal_array_uses_scaled_solar_metallicity(tmp_path):
    path = tmp_path / "snapshot_127.hdf5"
    write_auriga_like(path, wind_rows=())
    with h5py.File(path, "r+") as f:
        del f["PartType4/GFM_Metals"]
        f["PartType4/GFM_Metallicity"][...] = np.full(400, 0.0134 * 10**-0.5)
    particles = read_particles(path)
    np.testing.assert_allclose(particles.populations["feh"], -0.5, atol=1e-9)
    assert "alpha_fe" not in particles.populations


def test_iron_free_stars_are_floored_and_counted(tmp_path):
    path = tmp_path / "snapshot_127.hdf5"
    write_auriga_like(path, wind_rows=())
    with h5py.File(path, "r+") as f:
        f["PartType4/GFM_Metals"][7, ARRAY_ELEMENTS.index("Fe")] = 0.0
    particles = read_particles(path)
    assert particles.populations["feh"][7] == -5.0
    assert particles.provenance["feh_floored_to_-5"] == "1"


def test_a_source_without_populations_has_none(tmp_path):
    ps, mass = galaxy()
    path = tmp_path / "g.parquet"
    frame(ps, mass).to_parquet(path)
    assert read_particles(path).populations == {}


def test_population_columns_are_read_and_survive_the_parquet_round_trip(tmp_path):
    ps, mass = galaxy()
    rng = np.random.default_rng(2)
    age, feh = rng.uniform(0.1, 13.0, len(ps)), rng.uniform(-2.0, 0.3, len(ps))
    path = tmp_path / "g.csv"
    frame(ps, mass).assign(age=age, feh=feh).to_csv(path, index=False)
    particles = read_particles(path)
    np.testing.assert_allclose(particles.populations["age"], age, rtol=1e-15)
    subset = particles.subset(np.arange(0, len(ps), 2))
    np.testing.assert_array_equal(subset.populations["feh"], particles.populations["feh"][::2])
    written = tmp_path / "out.parquet"
    write_particles(subset, written, {})
    back, _ = read_written_particles(written)
    assert back.populations.keys() == {"age", "feh"}
    np.testing.assert_array_equal(back.populations["age"], subset.populations["age"])


def _bad_population_file(tmp_path, **columns):
    ps, mass = galaxy()
    rng = np.random.default_rng(3)
    base = {"age": rng.uniform(0.5, 12.0, len(ps)), "feh": rng.uniform(-1.5, 0.3, len(ps))}
    data = frame(ps, mass).assign(**(base | columns))
    path = tmp_path / "bad.parquet"
    data.to_parquet(path)
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda n: {"age": np.full(n, 5e9)}, r"'age'.*looks like it is in yr.*Gyr"),
    (lambda n: {"feh": np.full(n, 0.012)}, r"'feh'.*metal mass fraction Z.*log10"),
    (lambda n: {"age": np.where(np.arange(n) == 4, np.nan, 3.0)},
     r"'age' has no value .* at 1 of \d+ rows \[4\].*every particle"),
    (lambda n: {"age": np.where(np.arange(n) == 9, 14.5, 3.0)},
     r"'age'.*outside \(0, 13.8\].*\[9\]"),
    (lambda n: {"feh": np.where(np.arange(n) == 2, -7.0, 0.1)},
     r"'feh'.*outside \[-5, 1.5\].*\[2\]"),
])
def test_bad_population_columns_are_input_errors_that_name_the_file_column_and_rows(
        tmp_path, change, message):
    path = _bad_population_file(tmp_path, **change(400))
    with pytest.raises(InputError, match=message) as raised:
        read_particles(path)
    assert str(path) in str(raised.value)


def test_populations_given_for_only_some_rows_of_a_csv_are_named(tmp_path):
    ps, mass = galaxy()
    data = frame(ps, mass).assign(age=3.0, feh=-0.2)
    data.loc[[5, 6], ["age", "feh"]] = np.nan
    path = tmp_path / "partial.csv"
    data.to_csv(path, index=False)
    with pytest.raises(InputError, match=r"partial.csv: column 'age' has no value .* \[5, 6\]"):
        read_particles(path)


def test_age_without_metallicity_is_refused(tmp_path):
    ps, mass = galaxy()
    path = tmp_path / "age-only.parquet"
    frame(ps, mass).assign(age=2.0).to_parquet(path)
    with pytest.raises(InputError, match="has 'age' but no 'feh' column"):
        read_particles(path)
    frame(ps, mass).assign(mass_initial=mass).to_parquet(path)
    with pytest.raises(InputError, match="has 'mass_initial' but no 'age' column"):
        read_particles(path)


def test_a_metal_rich_population_is_not_mistaken_for_z(tmp_path):
    """All [Fe/H] ≥ 0 is plausible for a metal-rich selection; only Z-like values are refused."""
    path = _bad_population_file(tmp_path, feh=np.linspace(0.0, 0.4, 400))
    np.testing.assert_allclose(read_particles(path).populations["feh"], np.linspace(0.0, 0.4, 400))
