"""Tests of the run config: shipped configs, paper defaults, errors, overrides, identity."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pydantic
import pytest
import yaml

from gflow_dist.config import RunConfig, build_config, load_config, parse_override
from gflow_dist.errors import ConfigError
from gflow_dist.frame import SolarFrame
from gflow_dist.provenance import run_metadata

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))

# The paper's values of the fixed keys (arXiv:2211.11765 §2.1, §3.3) for each shipped config.
PAPER_GALAXIES = {
    "auriga6": {"source": "data/auriga6_stars.hdf5", "sun": (-8.0, 0.0, 0.02)},
    "h277": {"source": "data/h277.tipsy", "sun": (-8.122, 0.0, 0.0208)},
}


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str, overrides: list[str] = ()) -> str:
    """The message of the ConfigError that loading ``text`` from a file raises."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=list(overrides))
    return str(info.value)


# ----------------------------------------------------------------------------- shipped files


def test_the_three_configs_are_shipped():
    assert {p.stem for p in CONFIG_FILES} >= {"mock", "auriga6", "h277"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_every_shipped_config_loads_and_states_the_fixed_keys(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    tree = yaml.safe_load(path.read_text())
    for section, key in [("galaxy", "source"), ("galaxy", "sun_position_kpc"),
                         ("galaxy", "r_max_kpc")]:
        assert key in tree[section], f"{path.name} must state {section}.{key}"
    assert "upsamplers" in tree and "seed" in tree
    assert config.upsamplers[0] == "cnf" and "enbid" in config.upsamplers
    assert config.galaxy.r_max_kpc == 3.5
    text = path.read_text()
    assert text.startswith("#"), "each config starts with a header comment"
    assert f"gflow run configs/{path.name} --out runs/{path.stem}" in text


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_shipped_configs_state_only_keys_that_differ_or_are_fixed(path):
    """Every stated leaf differs from its default, unless it is one of the fixed keys."""
    fixed = {"galaxy.source", "galaxy.sun_position_kpc", "galaxy.r_max_kpc", "upsamplers",
             "seed", "cnf.ensemble_size", "cnf.max_epochs", "cnf.patience", "sample.factor",
             "sample.total", "cnf.refine", "evaluate.samples_per_particle",
             "evaluate.max_epochs", "evaluate.patience", "evaluate.repeats"}
    defaults = RunConfig().to_dict()
    stated = yaml.safe_load(path.read_text())

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield prefix + key, value

    resolved = load_config(path).to_dict()
    for key, _ in leaves(stated):
        if key in fixed:
            continue
        default, value = defaults, resolved
        for part in key.split("."):
            default, value = default[part], value[part]
        assert value != default, f"{path.name}: {key} restates its default"


@pytest.mark.parametrize("name", sorted(PAPER_GALAXIES))
def test_paper_galaxies_have_the_paper_values(name):
    config = load_config(CONFIG_DIR / f"{name}.yaml")
    paper = PAPER_GALAXIES[name]
    assert config.galaxy.source == paper["source"]
    assert config.galaxy.sun_position_kpc == paper["sun"]
    assert config.galaxy.r_max_kpc == 3.5
    assert config.upsamplers == ("cnf", "enbid", "maf")  # Appendix A2
    assert config.seed == 0
    # The paper's budget (§3.3): 10 members, patience 50, 500 stars per train particle.
    assert config.cnf.ensemble_size == 10
    assert config.cnf.patience == 50
    assert config.cnf.max_epochs == 100_000
    assert config.sample.factor == 500.0
    assert config.sample.total is None


def test_h277_is_read_as_tipsy_and_auriga6_by_extension():
    assert load_config(CONFIG_DIR / "h277.yaml").galaxy.format == "tipsy"
    assert load_config(CONFIG_DIR / "auriga6.yaml").galaxy.format == "auto"


def test_mock_config_is_a_small_demo():
    config = load_config(CONFIG_DIR / "mock.yaml")
    assert config.galaxy.source == "mock"
    assert config.galaxy.sun_position_kpc == (-8.0, 0.0, 0.02)
    assert config.galaxy.r_max_kpc == 3.5
    assert config.galaxy.mock.n_particles <= 100_000
    assert config.galaxy.mock.particle_mass_msun == 5000.0
    # Likelihood epochs cost ~80 solver steps per point; flow-matching epochs one field call.
    likelihood_epochs = (config.cnf.max_epochs if config.cnf.objective == "likelihood"
                         else config.cnf.likelihood_finetune_epochs)
    assert config.cnf.ensemble_size <= 2 and likelihood_epochs <= 20
    assert config.sample.factor is None and config.sample.total <= 1_000_000
    assert config.evaluate.samples_per_particle <= 10 and config.evaluate.max_epochs <= 10


def test_mock_config_scales_to_the_paper_budget_with_the_documented_overrides():
    """The --set line in mock.yaml's header gives the paper-sized run."""
    text = (CONFIG_DIR / "mock.yaml").read_text()
    overrides = [
        "galaxy.mock.n_particles=500000", "cnf.objective=likelihood",
        "cnf.likelihood_finetune_epochs=0", "cnf.ensemble_size=10", "cnf.max_epochs=100000",
        "cnf.patience=50", "sample.total=null", "sample.factor=500",
        "evaluate.samples_per_particle=200", "evaluate.max_epochs=100000",
        "evaluate.patience=100", "evaluate.batches_per_epoch=1000", "evaluate.refine=true",
        "evaluate.two_sample=true", "evaluate.truth_auc=true", "evaluate.repeats=1",
    ]
    for item in overrides:
        assert f"--set {item}" in text
    config = load_config(CONFIG_DIR / "mock.yaml", overrides=overrides)
    assert (config.cnf.ensemble_size, config.cnf.max_epochs, config.cnf.patience) == (
        10, 100_000, 50)
    assert config.cnf.max_train_particles is None
    assert (config.sample.factor, config.sample.total) == (500.0, None)
    assert config.galaxy.mock.n_particles == 500_000
    assert config.evaluate == RunConfig().evaluate  # the paper's classifier test


# ----------------------------------------------------------------------------- defaults


def test_defaults_are_the_papers():
    config = load_config(None)
    assert config == RunConfig()
    assert config.galaxy.source == "mock"
    assert config.galaxy.sun_position_kpc == (-8.0, 0.0, 0.02)
    assert config.galaxy.r_max_kpc == 3.5
    assert config.upsamplers == ("cnf",)
    cnf = config.cnf
    assert (cnf.hidden_layers, cnf.hidden_units) == (4, 32)
    assert cnf.solver_steps == 20
    assert cnf.stage_times == "rk4"
    assert (cnf.learning_rate, cnf.refine_learning_rate) == (1e-3, 1e-4)
    assert cnf.validation_fraction == 0.2
    assert cnf.batches_per_epoch == 10
    assert cnf.patience == 50
    assert cnf.ensemble_size == 10
    assert cnf.refine is True
    assert config.split.test_fraction == 0.5
    assert (config.sample.factor, config.sample.total) == (500.0, None)


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == RunConfig()
    assert load_config(_write(tmp_path, "# only a comment\n")) == RunConfig()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text, key, section, allowed", [
    ("cnf:\n  pateince: 3\n", "cnf.pateince", "cnf", ("patience", "ensemble_size")),
    ("bogus: 1\n", "bogus", "the top level", ("seed", "galaxy", "upsamplers")),
    ("galaxy:\n  mock:\n    n_particle: 10\n", "galaxy.mock.n_particle", "galaxy.mock",
     ("n_particles", "particle_mass_msun")),
])
def test_unknown_key_names_file_key_and_allowed_keys(tmp_path, text, key, section, allowed):
    message = _error(tmp_path, text)
    assert str(tmp_path / "run.yaml") in message
    assert f"unknown key '{key}'" in message
    listed = message.split(f"allowed in {section}:", 1)[1]
    for expected in allowed:
        assert expected in listed


@pytest.mark.parametrize("old, new", [("num_cpus_per_member", "num_cpus_per_trainer"),
                                      ("num_gpus_per_member", "num_gpus_per_trainer")])
def test_a_renamed_ray_key_names_its_new_name(tmp_path, old, new):
    message = _error(tmp_path, f"ray:\n  {old}: 1\n")
    assert f"key 'ray.{old}' was renamed to 'ray.{new}'" in message
    assert load_config(_write(tmp_path, f"ray:\n  {new}: 1\n")).ray.members_per_trainer == 1


def test_members_per_trainer_is_a_positive_integer(tmp_path):
    assert "ray.members_per_trainer" in _error(tmp_path, "ray:\n  members_per_trainer: 0\n")
    assert "ray.members_per_trainer" in _error(tmp_path, "ray:\n  members_per_trainer: 1.5\n")
    config = load_config(_write(tmp_path, "ray:\n  members_per_trainer: 10\n"))
    assert config.ray.members_per_trainer == 10


@pytest.mark.parametrize("text, key, fragment", [
    ("galaxy:\n  r_max_kpc: abc\n", "galaxy.r_max_kpc", "valid number"),
    ("galaxy:\n  r_max_kpc: -1.0\n", "galaxy.r_max_kpc", "greater than 0"),
    ("galaxy:\n  r_max_kpc: 0\n", "galaxy.r_max_kpc", "greater than 0"),
    ("cnf:\n  ensemble_size: 0\n", "cnf.ensemble_size", "greater than or equal to 1"),
    ("cnf:\n  ensemble_size: 2.5\n", "cnf.ensemble_size", "integer"),
    ("cnf:\n  validation_fraction: 1.0\n", "cnf.validation_fraction", "less than 1"),
    ("split:\n  test_fraction: -0.1\n", "split.test_fraction", "greater than 0"),
    ("seed: -1\n", "seed", "greater than or equal to 0"),
    ("galaxy:\n  sun_position_kpc: [1, 2]\n", "galaxy.sun_position_kpc", ""),
    ("galaxy:\n  sun_position_kpc: [1, 2, 3, 4]\n", "galaxy.sun_position_kpc", "expected 3 values"),
    ("galaxy:\n  sun_position_kpc: [a, 0, 0]\n", "galaxy.sun_position_kpc", "valid number"),
    ("galaxy:\n  format: fits\n", "galaxy.format", "tipsy"),
    ("sample:\n  factor: null\n", "sample", "set sample.factor or sample.total"),
    ("sample:\n  total: 0\n", "sample.total", "greater than 0"),
    ("upsamplers: cnf\n", "upsamplers", "tuple"),
])
def test_invalid_values_name_file_and_key(tmp_path, text, key, fragment):
    message = _error(tmp_path, text)
    assert str(tmp_path / "run.yaml") in message
    assert f"'{key}" in message
    assert fragment in message


def test_wrong_enum_lists_the_allowed_values(tmp_path):
    message = _error(tmp_path, "cnf:\n  stage_times: euler\n")
    assert "cnf.stage_times" in message
    assert "'rk4'" in message and "'torchdyn-1.0.6'" in message
    assert "'euler'" in message


def test_unknown_upsampler_names_the_allowed_ones(tmp_path):
    message = _error(tmp_path, "upsamplers: [foo]\n")
    assert "upsamplers" in message
    assert "'foo'" in message
    assert "'cnf'" in message


def test_all_problems_are_reported_at_once(tmp_path):
    message = _error(tmp_path, "cnf:\n  pateince: 3\ngalaxy:\n  r_max_kpc: -2\n")
    assert "cnf.pateince" in message and "galaxy.r_max_kpc" in message


def test_invalid_yaml(tmp_path):
    message = _error(tmp_path, "cnf: [unclosed\n")
    assert "not valid YAML" in message
    assert str(tmp_path / "run.yaml") in message


def test_duplicate_key_names_file_key_and_both_lines(tmp_path):
    message = _error(tmp_path, "seed: 1\ncnf:\n  patience: 3\n  max_epochs: 2\n  patience: 5\n")
    assert str(tmp_path / "run.yaml") in message
    assert "'patience' is set twice, at lines 3 and 5" in message


def test_keys_merged_with_yaml_anchors_may_be_overridden(tmp_path):
    text = "cnf: &recipe\n  patience: 3\nmaf:\n  <<: *recipe\n  patience: 7\n"
    assert load_config(_write(tmp_path, text)).maf.patience == 7


def test_non_utf8_file_names_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# Sun's frame: café\nseed: 1\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml is not UTF-8 text \(byte 0xe9"):
        load_config(path)


@pytest.mark.parametrize("text, key, fragment", [
    ("galaxy:\n  r_max_kpc: .inf\n", "galaxy.r_max_kpc", "finite"),
    ("galaxy:\n  sun_position_kpc: [-8, .nan, 0]\n", "galaxy.sun_position_kpc", "finite"),
    ("galaxy:\n  sun_position_kpc: [-8, 1, 0]\n", "galaxy.sun_position_kpc", "-x axis"),
    ("galaxy:\n  sun_position_kpc: [8, 0, 0]\n", "galaxy.sun_position_kpc", "x < 0"),
    ("galaxy:\n  max_speed_kms: 400000\n", "galaxy.max_speed_kms", "less than 299792"),
    ("split:\n  test_fraction: 0\n", "split.test_fraction", "greater than 0"),
    ("catalog:\n  figure_window_deg: [10, 95, 5]\n", "catalog.figure_window_deg", "dec"),
    ("catalog:\n  figure_window_deg: [10, 5, 0]\n", "catalog.figure_window_deg", "radius"),
    ("catalog:\n  figure_window_deg: [400, 5, 5]\n", "catalog.figure_window_deg", "ra"),
    ("upsamplers: []\n", "upsamplers", "at least one"),
    ("upsamplers: [cnf, enbid, cnf]\n", "upsamplers", "cnf listed more than once"),
    ("evaluate:\n  hidden_units: []\n", "evaluate.hidden_units", "at least 1 item"),
    ("cnf:\n  max_train_particles: 2\n", "cnf.max_train_particles", "at least 50"),
])
def test_values_that_could_never_run_are_refused_up_front(tmp_path, text, key, fragment):
    message = _error(tmp_path, text)
    assert key in message and fragment in message


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just a string\n", "str"),
                                        ("42\n", "int")])
def test_non_mapping_file(tmp_path, text, kind):
    message = _error(tmp_path, text)
    assert "must be a mapping" in message
    assert kind in message
    assert str(tmp_path / "run.yaml") in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ----------------------------------------------------------------------------- overrides


def test_override_scalar(tmp_path):
    path = _write(tmp_path, "cnf:\n  ensemble_size: 2\n")
    assert load_config(path).cnf.ensemble_size == 2
    assert load_config(path, overrides=["cnf.ensemble_size=3"]).cnf.ensemble_size == 3


def test_override_yaml_list_and_vector():
    config = load_config(
        CONFIG_DIR / "mock.yaml",
        overrides=["upsamplers=[cnf]", "galaxy.sun_position_kpc=[-8.1, 0, 0.0]"],
    )
    assert config.upsamplers == ("cnf",)
    assert config.galaxy.sun_position_kpc == (-8.1, 0.0, 0.0)


def test_override_creates_missing_sections(tmp_path):
    path = _write(tmp_path, "seed: 3\n")
    config = load_config(path, overrides=["galaxy.mock.n_particles=1234", "ray.address=auto"])
    assert config.galaxy.mock.n_particles == 1234
    assert config.ray.address == "auto"
    assert config.seed == 3
    # Siblings of the created key keep their defaults.
    assert config.galaxy.mock.particle_mass_msun == 5000.0
    assert config.galaxy.r_max_kpc == 3.5


def test_override_without_a_file():
    config = load_config(None, overrides=["seed=7", "cnf.stage_times=torchdyn-1.0.6"])
    assert config.seed == 7
    assert config.cnf.stage_times == "torchdyn-1.0.6"


def test_later_override_wins():
    config = load_config(None, overrides=["cnf.patience=3", "cnf.patience=4"])
    assert config.cnf.patience == 4


def test_override_value_keeps_equals_signs_and_is_stripped():
    key, value = parse_override(" galaxy.source = data/a=b.hdf5")
    assert key == ["galaxy", "source"]
    assert value == "data/a=b.hdf5"
    assert parse_override("sample.total=null") == (["sample", "total"], None)


@pytest.mark.parametrize("text", ["cnf.ensemble_size", "=3", "  =3", ""])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, overrides=[text])


def test_override_with_invalid_yaml_value():
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, overrides=["upsamplers=[cnf"])


def test_override_of_unknown_key_names_it(tmp_path):
    path = _write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=["cnf.pateince=3"])
    message = str(info.value)
    assert "unknown key 'cnf.pateince'" in message
    assert str(path) in message
    assert "--set cnf.pateince=3" in message


def test_override_into_a_scalar_is_an_error(tmp_path):
    path = _write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        load_config(path, overrides=["seed.x=1"])


def test_override_with_invalid_value_names_key():
    with pytest.raises(ConfigError, match="cnf.ensemble_size"):
        load_config(None, overrides=["cnf.ensemble_size=0"])


# ----------------------------------------------------------------------------- identity


def test_config_is_frozen():
    config = load_config(CONFIG_DIR / "mock.yaml")
    with pytest.raises(pydantic.ValidationError):
        config.seed = 3
    with pytest.raises(pydantic.ValidationError):
        config.cnf.patience = 3
    with pytest.raises(pydantic.ValidationError):
        config.galaxy.mock.n_particles = 3
    with pytest.raises(TypeError):
        config.galaxy.sun_position_kpc[0] = 1.0  # tuples, not lists


@pytest.mark.parametrize("path", [None, *CONFIG_FILES],
                         ids=["defaults", *[p.name for p in CONFIG_FILES]])
def test_to_yaml_round_trips(path):
    config = load_config(path)
    again = build_config(yaml.safe_load(config.to_yaml()))
    assert again == config
    assert again.hash() == config.hash()


def test_to_dict_is_complete_and_json_safe():
    tree = load_config(None).to_dict()
    assert set(tree) == {"seed", "galaxy", "upsamplers", "split", "cnf", "enbid", "enbid_ananke",
                         "kde_mle", "maf", "sample", "catalog", "evaluate", "ray"}
    assert tree["galaxy"]["sun_position_kpc"] == [-8.0, 0.0, 0.02]
    assert tree["upsamplers"] == ["cnf"]


def test_hash_is_stable_and_sensitive(tmp_path):
    path = CONFIG_DIR / "mock.yaml"
    first = load_config(path).hash()
    assert load_config(path).hash() == first
    assert len(first) == 64 and int(first, 16) >= 0
    # The same values spelled differently hash the same.
    spelled = _write(tmp_path, path.read_text() + "\nsplit:\n  test_fraction: 0.5\n")
    assert load_config(spelled).hash() == first
    # Any changed value changes it.
    assert load_config(path, overrides=["seed=1"]).hash() != first
    assert load_config(path, overrides=["cnf.patience=6"]).hash() != first
    assert load_config(path, overrides=["galaxy.sun_position_kpc=[-8.0, 0, 0.03]"]).hash() \
        != first
    assert load_config(None).hash() != first


def test_equal_values_hash_equal_regardless_of_int_or_float():
    a = load_config(None, overrides=["sample.factor=500", "galaxy.r_max_kpc=3"])
    b = load_config(None, overrides=["sample.factor=500.0", "galaxy.r_max_kpc=3.0"])
    assert a == b and a.hash() == b.hash()


def test_every_training_section_shares_the_recipe_and_builds_its_own():
    config = build_config({"cnf": {"patience": 7, "compile": False},
                           "maf": {"batches_per_epoch": 3},
                           "evaluate": {"learning_rate": 2e-3, "refine": False}})
    assert config.cnf.to_recipe().patience == 7
    assert config.maf.to_recipe().batches_per_epoch == 3
    assert config.maf.to_recipe().patience == 50
    evaluate = config.evaluate.to_recipe()
    assert (evaluate.learning_rate, evaluate.refine, evaluate.patience) == (2e-3, False, 100)
    assert config.evaluate.validation_fraction == 0.5  # the paper's half, its own default


BAD_SUNS = {  # issue 16: a Sun the frame cannot hold must not pass the config
    "y_not_zero": ([-8.0, 0.1, 0.02], "-x axis"),
    "x_positive": ([8.0, 0.0, 0.02], "x < 0"),
    "x_zero": ([0.0, 0.0, 1.0], "x < 0"),
    "nan": ([-8.0, float("nan"), 0.0], "finite"),
    "two_values": ([-8.0, 0.0], "3 values"),
}


@pytest.mark.parametrize("sun, fragment", BAD_SUNS.values(), ids=BAD_SUNS)
def test_build_config_refuses_a_sun_the_frame_cannot_hold(sun, fragment):
    with pytest.raises(ConfigError) as refused:
        build_config({"galaxy": {"sun_position_kpc": sun}})
    assert "'galaxy.sun_position_kpc" in str(refused.value)
    assert fragment in str(refused.value)


def test_the_config_builds_the_one_solar_frame():
    config = build_config({"galaxy": {"sun_position_kpc": [-8.122, 0, 0.0208],
                                      "sun_velocity_kms": [12.9, 245.6, 7.78]}})
    frame = config.galaxy.frame
    assert frame is config.galaxy.frame
    assert frame == SolarFrame((-8.122, 0.0, 0.0208), (12.9, 245.6, 7.78))
    assert pickle.loads(pickle.dumps(config)).galaxy.frame == frame  # as Ray ships it


def test_run_metadata_records_the_frame_of_the_config():
    config = build_config({"galaxy": {"sun_position_kpc": [-8.122, 0, 0.0208],
                                      "sun_velocity_kms": [12.9, 245.6, 7.78]}})
    metadata, frame = run_metadata(config), config.galaxy.frame.to_metadata()
    assert {key: metadata[key] for key in frame} == frame
    assert json.loads(metadata["sun_position_kpc"]) == [-8.122, 0.0, 0.0208]
    assert json.loads(metadata["sun_velocity_kms"]) == [12.9, 245.6, 7.78]
    assert float(metadata["galcen_distance_kpc"]) == config.galaxy.frame.galcen_distance_kpc
