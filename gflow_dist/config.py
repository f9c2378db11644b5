"""Run configuration: YAML files loaded into validated, frozen objects.

Every key has a default, so a config file only states what differs. An unknown key, a
wrong type or a value out of range raises :class:`~gflow_dist.errors.ConfigError`
naming the file, the key and what is allowed. Keys that scripts rely on are fixed:
``galaxy.source``, ``galaxy.sun_position_kpc``, ``galaxy.r_max_kpc``, ``upsamplers``,
``seed``, ``cnf.ensemble_size``, ``cnf.max_epochs``, ``cnf.patience``,
``sample.factor``, ``sample.total``, ``evaluate.samples_per_particle``,
``evaluate.max_epochs`` and ``evaluate.patience``.

Every number must be finite; a key stated twice in one YAML mapping is an error, as is a
file that is not UTF-8 text.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gflow_dist.data.validation import DEFAULT_MAX_SPEED_KMS
from gflow_dist.errors import ConfigError
from gflow_dist.frame import FrameError, SolarFrame

if TYPE_CHECKING:
    from gflow_dist.flows.training import Recipe


def _three_values(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) != 3:
        raise ValueError(f"expected 3 values [x, y, z], not {len(value)}")
    return value


PositiveFloat = Annotated[float, Field(gt=0)]
Vector3 = Annotated[tuple[float, float, float], BeforeValidator(_three_values)]

UPSAMPLER_NAMES = ("cnf", "enbid", "enbid_ananke", "maf", "kde_mle")
"""Upsamplers that ``upsamplers:`` may name: the paper's CNF and its baselines."""

SPEED_OF_LIGHT_KMS = 299_792.458
"""c [km/s]: ``galaxy.max_speed_kms`` must stay below it."""

MIN_TRAIN_PARTICLES = 50
"""Fewest train particles a model may be fitted to.

The flows (``cnf``, ``maf``) and ``kde_mle`` hold out a share of the train particles
(0.2 by default) to stop early or to score their kernel widths: with 50 train particles
that is 10 held-out particles, the least that spans the 6-D phase space (7 points) with
some margin. Fewer give degenerate densities rather than an error.
"""


def sky_window_problem(ra_deg: float, dec_deg: float, radius_deg: float) -> str | None:
    """Why (ra, dec, radius) [deg] is no sky window, or None when it is one."""
    if not all(math.isfinite(v) for v in (ra_deg, dec_deg, radius_deg)):
        return "ra, dec and radius must be finite numbers of degrees"
    if not 0.0 <= ra_deg <= 360.0:
        return "ra must be in [0, 360] deg"
    if not -90.0 <= dec_deg <= 90.0:
        return "dec must be in [-90, 90] deg"
    if not 0.0 < radius_deg <= 180.0:
        return "radius must be in (0, 180] deg"
    return None


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


class MockConfig(_Frozen):
    """The built-in mock galaxy (``gflow_dist.data.mock``)."""

    n_particles: StrictInt = Field(500_000, gt=0, description="particles inside the sphere")
    particle_mass_msun: PositiveFloat = Field(5000.0, description="mass of each particle [M☉]")


class GalaxyConfig(_Frozen):
    """Where the particles come from and the Solar frame (paper §2.1)."""

    source: str = Field("mock", description="'mock' or the path of a particle file")
    format: Literal["auto", "parquet", "csv", "hdf5", "arepo", "npy", "npz", "tipsy"] = "auto"
    sun_position_kpc: Vector3 = Field(
        (-8.0, 0.0, 0.02), description="Galactocentric Sun position [kpc], paper §2.1"
    )
    sun_velocity_kms: Vector3 = Field(
        (11.1, 232.24, 7.25),
        description="Galactocentric Sun velocity [km/s]; +y is the disk motion",
    )
    r_max_kpc: PositiveFloat = Field(3.5, description="selection sphere radius [kpc]")
    max_speed_kms: PositiveFloat = Field(
        DEFAULT_MAX_SPEED_KMS, lt=SPEED_OF_LIGHT_KMS, description="particles faster than "
        "this (Galactocentric |v| [km/s]) are refused as corrupt; 3000 km/s is 1% of c, "
        "five times the Milky Way's escape speed near the Sun"
    )
    mock: MockConfig = MockConfig()
    _frame: SolarFrame = PrivateAttr()

    @model_validator(mode="after")
    def _build_frame(self) -> GalaxyConfig:
        """Build the Solar frame once; a Sun it refuses is an error at its key."""
        try:
            self._frame = SolarFrame(self.sun_position_kpc, self.sun_velocity_kms)
        except FrameError as err:
            raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                type=PydanticCustomError("solar_frame", err.problem), loc=(err.key,),
                input=err.value)]) from None
        return self

    @property
    def frame(self) -> SolarFrame:
        """The Solar frame of ``sun_position_kpc`` [kpc] and ``sun_velocity_kms`` [km/s]."""
        return self._frame


class SplitConfig(_Frozen):
    """Train/test split of the selected particles (paper §5.3: 1:1)."""

    test_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="share of the selected "
                                 "particles held out for testing; both halves must be non-empty")


class TrainingRecipeConfig(_Frozen):
    """The training recipe that the CNF, the MAF and the classifier share (paper §3.3).

    Adam at ``learning_rate`` on ``batches_per_epoch`` minibatches per epoch, early
    stopping after ``patience`` epochs without a better validation loss on the held-out
    ``validation_fraction``, then (``refine``) the same from the best state at
    ``refine_learning_rate``. Each section that trains states its own values.
    """

    learning_rate: PositiveFloat = 1e-3
    refine_learning_rate: PositiveFloat = 1e-4
    validation_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="held out to stop early")
    batches_per_epoch: StrictInt = Field(10, ge=1)
    max_epochs: StrictInt = Field(100_000, ge=1, description="cap per training phase")
    patience: StrictInt = Field(50, ge=1, description="epochs without validation improvement")
    refine: StrictBool = Field(True, description="restart from the best state at the refine rate")

    def to_recipe(self) -> Recipe:
        """The :class:`~gflow_dist.flows.training.Recipe` these settings describe."""
        from gflow_dist.flows.training import Recipe

        return Recipe(self.learning_rate, self.refine_learning_rate, self.batches_per_epoch,
                      self.max_epochs, self.patience, self.refine)


class CNFConfig(TrainingRecipeConfig):
    """GalaxyFlow's CNF and its training recipe (paper §3.2–3.3)."""

    ensemble_size: StrictInt = Field(10, ge=1, description="independently seeded members")
    max_train_particles: StrictInt | None = Field(
        None, gt=1, description="train on a random subset of this size (demo budgets); "
        "null uses every train particle, as the paper does"
    )
    hidden_layers: StrictInt = Field(4, ge=1)
    hidden_units: StrictInt = Field(32, ge=1)
    solver_steps: StrictInt = Field(20, ge=1, description="fixed RK4 steps from t=0 to t=1")
    stage_times: Literal["rk4", "torchdyn-1.0.6"] = Field(
        "rk4",
        description="'rk4' is classic RK4; 'torchdyn-1.0.6' reproduces torchdyn's "
        "stage times (t, t, t+h/2, t+h/2) for models trained with it",
    )
    compile: StrictBool = Field(
        True, description="train through torch.compile (faster, ~30 s to build)"
    )
    objective: Literal["likelihood", "flow_matching"] = Field(
        "likelihood", description="'likelihood' is the paper's maximum likelihood through the "
        "RK4 solve; 'flow_matching' regresses the same vector field onto straight paths "
        "from the base (one field evaluation per point); sampling and densities are the same"
    )
    likelihood_finetune_epochs: StrictInt = Field(
        0, ge=0, description="after flow matching, train by likelihood for at most this many "
        "epochs per phase (0: none)"
    )


class EnbidConfig(_Frozen):
    """Simplified EnBiD kernel smoothing (paper §4); ``kde_mle`` starts from its widths."""

    variance_factor: PositiveFloat = Field(
        1 / 12, description="kernel variance σ_i² = variance_factor·L_i² for leaf-box side "
        "L_i; 1/12 is the variance of a uniform distribution over the box"
    )
    mass_weighted: StrictBool = Field(
        False, description="draw parents in proportion to mass (false: uniformly, as the paper)"
    )
    truncation_sigma: PositiveFloat = Field(
        6.0, description="kernels are Gaussians truncated to χ² ≤ truncation_sigma² "
        "(Mahalanobis radius) and renormalised; sampling and log_prob agree"
    )


class AnankeConfig(_Frozen):
    """The real EnBiD binary with py-ananke's kernels (the ``enbid`` extra, GPL-2)."""

    neighbours: StrictInt = Field(64, ge=2, description="EnBiD's ngb smoothing neighbours")


class KdeMleConfig(_Frozen):
    """Adaptive KDE: EnBiD widths scaled by factors fitted by maximum likelihood."""

    per_space: StrictBool = Field(
        True, description="one factor for positions and one for velocities (false: one global)"
    )
    holdout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of train particles that scores the factors"
    )


class MAFConfig(TrainingRecipeConfig):
    """Masked autoregressive flows p(r)·p(v|r) (paper Appendix A), trained like the CNF."""

    ensemble_size: StrictInt = Field(10, ge=1)
    max_train_particles: StrictInt | None = Field(None, gt=1)
    transforms: StrictInt = Field(5, ge=1, description="autoregressive transforms per flow")
    hidden_layers: StrictInt = Field(2, ge=1)
    hidden_units: StrictInt = Field(128, ge=1)


class CatalogConfig(_Frozen):
    """The HEALPix-partitioned catalogs written from each upsampler's stars."""

    zarr: StrictBool = Field(
        True, description="also write a Zarr v3 store (xarray) next to the HATS Parquet "
        "catalog (lsdb, Dask), which is always written: the store is built from it"
    )
    zarr_max_stars: StrictInt = Field(
        100_000_000, gt=0, description="catalogs with more stars skip the Zarr store, which "
        "one process copies from the HATS catalog: raise it to build larger ones anyway"
    )
    figure_stars: StrictInt = Field(
        1_000_000, gt=0, description="the figures are drawn from the first shards' stars, "
        "up to this many (a uniform random subset of the catalog, stored with it)"
    )
    partition_order: StrictInt | None = Field(
        None, ge=0, le=19, description="fixed HEALPix order of the partitions; null splits "
        "dense pixels adaptively up to highest_order"
    )
    highest_order: StrictInt = Field(10, ge=0, le=19)
    max_rows_per_partition: StrictInt = Field(
        1_000_000, gt=0, description="adaptive partitions split until they hold at most this"
    )
    row_group_rows: StrictInt = Field(
        100_000, gt=0, description="stars per Parquet row group in a partition file; rows are "
        "sorted by _healpix_29, so smaller groups let cone and pixel filters skip more of a "
        "file (each group's min/max statistics are in the footer and in _metadata)"
    )
    margin_arcsec: float = Field(
        10.0, gt=0, le=3600, description="margin cache threshold [arcsec]: for each partition "
        "the HATS collection also holds the other partitions' stars within this distance of "
        "its boundary, so lsdb crossmatches find neighbours across partition edges"
    )
    figure_window_deg: Vector3 = Field(
        (167.47, -4.2, 15.0), description="(ra, dec, radius) [deg] of the sky window the "
        "figures show; the paper's Figs. 1, 3–5 window by default"
    )

    @field_validator("figure_window_deg")
    @classmethod
    def _sky_window(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        problem = sky_window_problem(*value)
        if problem:
            raise ValueError(problem)
        return value


class EvaluateConfig(TrainingRecipeConfig):
    """The multi-model classifier test (paper §5.3) and the scores beyond the paper."""

    enabled: StrictBool = Field(True, description="evaluate as the last stage of `gflow run`")
    samples_per_particle: PositiveFloat = Field(
        200.0, description="K: each upsampler draws K × N_train stars for the classifier "
        "(paper: 200)"
    )
    max_test_particles: StrictInt | None = Field(
        None, gt=1, description="score on a seeded random subset of this many test particles "
        "(demo budgets); null uses them all, as the paper does"
    )
    hidden_units: tuple[Annotated[StrictInt, Field(ge=1)], ...] = Field(
        (2048, 1024, 128, 128), min_length=1,
        description="the classifier MLP's hidden layers (paper §5.3)"
    )
    validation_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="paper: half")
    batches_per_epoch: StrictInt = Field(1000, ge=1, description="paper: 1000")
    patience: StrictInt = Field(100, ge=1, description="paper: 100 epochs")
    two_sample: StrictBool = Field(
        True, description="also the binary particles-vs-upsampler AUC of §5.2 (secondary)"
    )
    truth: StrictBool = Field(
        True, description="KL(truth ‖ model), per component too, when the galaxy's density "
        "is known (the mock galaxy)"
    )
    truth_auc: StrictBool = Field(
        True, description="with truth: also the AUC of a classifier of fresh truth draws "
        "against each upsampler's stars (one more classifier per upsampler)"
    )
    repeats: StrictInt = Field(
        1, ge=1, description="R independent repeats of every test, each with its own star "
        "draw, classifier initialisation and minibatch order; errors then cover the spread "
        "between repeats (paper: 1, which leaves that spread unmeasured; 5 or more for "
        "publication)"
    )


class SampleConfig(_Frozen):
    """How many stars to draw: ``factor`` per train particle or a ``total``."""

    factor: PositiveFloat | None = Field(500.0, description="stars per particle (paper: 500)")
    total: StrictInt | None = Field(None, gt=0, description="total stars; overrides factor")
    batch_size: StrictInt = Field(65_536, gt=0, description="stars per streamed batch")
    shard_size: StrictInt = Field(
        1_000_000, gt=0, description="stars per shard of the distributed draw; each shard "
        "has its own seed, so any one can be regenerated alone"
    )

    @model_validator(mode="after")
    def _one_count(self) -> SampleConfig:
        if self.factor is None and self.total is None:
            raise ValueError("set sample.factor or sample.total")
        return self


class RayConfig(_Frozen):
    """The Ray cluster: ``address`` None starts a local one."""

    address: str | None = None
    num_cpus_per_trainer: PositiveFloat = Field(
        1.0, description="CPUs of one actor that trains ensemble members"
    )
    num_gpus_per_trainer: float = Field(
        0.0, ge=0.0, description="GPUs of one member-training actor; 0 on CPU-only clusters"
    )
    members_per_trainer: StrictInt = Field(
        1, ge=1, description="members one actor trains at once, as one batched model"
    )
    checkpoint_uri: str | None = Field(
        None, description="where members checkpoint (a path or a pyarrow/fsspec URI every "
        "node can reach); null uses DIR/models/<name>/training"
    )
    num_cpus_per_sampler: PositiveFloat = Field(1.0, description="per sampling worker")
    num_gpus_per_sampler: float = Field(0.0, ge=0.0, description="0 on CPU-only clusters")
    max_samplers: StrictInt | None = Field(
        None, ge=1, description="concurrent sampling workers; null sizes the pool from the "
        "cluster's resources"
    )
    num_gpus_per_classifier: float = Field(0.0, ge=0.0, description="the classifier's actor")
    evaluation_shards: StrictInt = Field(
        8, ge=1, description="test-particle shards scored in parallel; partial sums merge"
    )
    max_cpus_per_node: PositiveFloat | None = Field(
        None, description="CPUs of the largest node the cluster may ever have (autoscaled "
        "ones too); a worker asking for more fails at once; null infers it (a fixed "
        "cluster: its live nodes; an autoscaling one: unknown, so a stage waits)"
    )
    max_gpus_per_node: float | None = Field(
        None, ge=0.0, description="GPUs of the largest node the cluster may ever have; "
        "null infers it as for max_cpus_per_node"
    )
    resource_wait_s: PositiveFloat = Field(
        600.0, description="how long a stage waits for the autoscaler to add a node its "
        "workers fit on [s] before it fails"
    )


class RunConfig(_Frozen):
    """A whole run: every stage reads its section."""

    seed: StrictInt = Field(0, ge=0)
    galaxy: GalaxyConfig = GalaxyConfig()
    upsamplers: tuple[Literal[UPSAMPLER_NAMES], ...] = ("cnf",)  # type: ignore[valid-type]
    split: SplitConfig = SplitConfig()
    cnf: CNFConfig = CNFConfig()
    enbid: EnbidConfig = EnbidConfig()
    enbid_ananke: AnankeConfig = AnankeConfig()
    kde_mle: KdeMleConfig = KdeMleConfig()
    maf: MAFConfig = MAFConfig()
    sample: SampleConfig = SampleConfig()
    catalog: CatalogConfig = CatalogConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ray: RayConfig = RayConfig()

    @field_validator("upsamplers")
    @classmethod
    def _some_upsamplers_once_each(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if not names:
            raise ValueError(f"name at least one upsampler ({', '.join(UPSAMPLER_NAMES)})")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once; list each "
                             "upsampler once")
        return names

    @model_validator(mode="after")
    def _enough_train_particles(self) -> RunConfig:
        for name in self.upsamplers:
            cap = getattr(getattr(self, name, None), "max_train_particles", None)
            if cap is not None and cap < MIN_TRAIN_PARTICLES:
                raise ValueError(f"{name}.max_train_particles = {cap} is below the "
                                 f"{MIN_TRAIN_PARTICLES} train particles a model needs; "
                                 f"set it to at least {MIN_TRAIN_PARTICLES}, or null")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe dict of every value, defaults included."""
        return json.loads(self.model_dump_json())

    def to_yaml(self) -> str:
        """The resolved config as YAML, as ``gflow config show`` prints it."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """SHA-256 of the resolved config; recorded in every output's metadata."""
        canonical = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``key.sub=value`` into its key path and YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    return key.strip().split("."), value


def _apply_override(tree: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def _section_keys(path: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in path:
        model = model.model_fields[part].annotation
    return sorted(model.model_fields)


RENAMED_KEYS = {
    "ray.num_cpus_per_member": "ray.num_cpus_per_trainer",
    "ray.num_gpus_per_member": "ray.num_gpus_per_trainer",
}
"""Keys that were renamed: an old name is an error that names the new one."""


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden" and key in RENAMED_KEYS:
        return (f"key {key!r} was renamed to {RENAMED_KEYS[key]!r} (the resources of one "
                "actor that trains ray.members_per_trainer members); use the new name")
    if error["type"] == "extra_forbidden":
        section = error["loc"][:-1]
        allowed = ", ".join(_section_keys(section))
        where = ".".join(map(str, section)) or "the top level"
        return f"unknown key {key!r} (allowed in {where}: {allowed})"
    message = error["msg"].removeprefix("Value error, ")
    if not key:  # a rule across sections: the message names its keys
        return message
    return f"key {key!r}: {message}, got {error.get('input')!r}"


def build_config(tree: dict[str, Any], origin: str = "<overrides>") -> RunConfig:
    """Validate a nested dict into a :class:`RunConfig`; ``origin`` names it in errors."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        problems = "\n  ".join(_describe(e) for e in err.errors())
        raise ConfigError(f"invalid config {origin}:\n  {problems}") from None


def _drop_empty_sections(tree: dict[str, Any]) -> dict[str, Any]:
    """A section whose keys are all commented out reads as None: treat it as empty."""
    return {key: {} if value is None and key in _SECTIONS else value
            for key, value in tree.items()}


class _DuplicateKey(yaml.YAMLError):
    """A mapping states one key twice; ``lines`` are 1-based."""

    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        super().__init__(f"key {key!r} is set twice, at lines {first_line} and "
                         f"{second_line}; keep one of them")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error.

    Plain PyYAML keeps the last value silently. Keys merged in with ``<<`` may be
    overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in first_lines:
                    raise _DuplicateKey(key, first_lines[key], line)
                first_lines[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)


_SECTIONS = ("galaxy", "split", "cnf", "enbid", "enbid_ananke", "kde_mle", "maf", "sample",
             "catalog", "evaluate", "ray")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML run config, apply ``key.sub=value`` overrides, and validate it.

    ``path`` None starts from the defaults alone (the built-in mock galaxy).
    """
    tree: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        origin = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            byte = err.object[err.start]
            raise ConfigError(f"config {path} is not UTF-8 text (byte 0x{byte:02x} at offset "
                              f"{err.start}); save it as UTF-8") from None
        try:
            tree = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except _DuplicateKey as err:
            raise ConfigError(f"invalid config {path}:\n  {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config {path} is not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config {path} must be a mapping of keys, got {type(tree).__name__}")
        tree = _drop_empty_sections(tree)
    for text in overrides:
        key_path, value = parse_override(text)
        _apply_override(tree, key_path, value, text)
    if overrides:
        origin += " with --set " + " ".join(overrides)
    return build_config(tree, origin)
