"""``RunConfig`` and its schema: checked when made, frozen, hashable, shared by the CLI, the
benchmark scenarios and the site profiles."""

from __future__ import annotations

import dataclasses

import pytest

from agc import RunConfig
from agc.cli import build_parser, config_from_args
from agc.config import (
    ENGINES,
    LOCAL_MODES,
    RUN_SCHEMA,
    ConfigError,
    check_value,
)


@pytest.mark.parametrize(
    ("options", "key", "needle"),
    [
        ({"chunksize": -5}, "chunksize", "less than the minimum of 1"),
        ({"chunksize": 0}, "chunksize", "less than the minimum of 1"),
        ({"chunksize": "many"}, "chunksize", "expected integer"),
        ({"engine": "nope"}, "engine", "is not one of chunked, dask-awkward"),
        ({"data_lake": "sometimes"}, "data_lake", "is not one of copy, only, off"),
        ({"n_files": 0}, "n_files", "a positive number of files per sample, or -1"),
        ({"n_files": -2}, "n_files", "a positive number of files per sample, or -1"),
        ({"samples": ("ttbar",)}, "samples", "is not a fileset key"),
        ({"samples": ()}, "samples", "should be non-empty"),
        (
            {"backend": "nope"},
            "backend",
            "unknown backend; choose one of dask, dirac, gpu, htcondor",
        ),
        ({"mode": "threads"}, "mode", "is not one of inprocess, processes, dask"),
        ({"workers": 0}, "workers", "less than the minimum of 1"),
        ({"seed": -1}, "seed", "less than the minimum of 0"),
        ({"xcache": "http://cache"}, "xcache", "is not an XRootD URL"),
        ({"io_branches": "4.1"}, "io_branches", "only applies with io_only"),
        ({"io_only": True, "io_branches": "99"}, "io_branches", "is not one of analysis, 4.1"),
        ({"engine": "dask-awkward"}, "engine", "needs a Dask executor: use --mode dask"),
        ({"backend_options": {"mode": "dask"}}, "backend_options", "give 'mode' as the run option"),
        ({"systematics": "yes"}, "systematics", "expected boolean"),
    ],
)
def test_a_bad_value_fails_when_the_config_is_made(options, key, needle):
    with pytest.raises(ConfigError, match=needle) as caught:
        RunConfig(**options)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}=")


def test_good_configs_and_their_normal_forms(tmp_path):
    config = RunConfig(
        catalog=tmp_path / "catalog.json",  # a path: stored as a string
        samples=["ttbar__nominal"],  # a list: stored as a tuple
        io_only=True,
        io_branches="4.1",
        engine="dask-awkward",
        mode="dask",
        backend_options={"site_option": 3},
    )
    assert config.catalog == str(tmp_path / "catalog.json")
    assert config.samples == ("ttbar__nominal",)
    assert config.branches == ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_btagCSVV2", "Jet_mass",
                               "Muon_pt", "Electron_pt")  # fmt: skip
    assert config.backend_kwargs() == {"site_option": 3, "mode": "dask"}


def test_frozen_and_hashable():
    a = RunConfig(chunksize=50_000, backend_options={"x": 1})
    b = RunConfig(chunksize=50_000, backend_options={"x": 1})
    assert a == b and hash(a) == hash(b) and len({a, b, RunConfig()}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.chunksize = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.backend_options["x"] = 2  # type: ignore[index]
    # a variant made with replace is checked too
    assert dataclasses.replace(a, chunksize=10).chunksize == 10
    with pytest.raises(ConfigError, match="chunksize"):
        dataclasses.replace(a, chunksize=-1)


def test_the_schema_describes_every_field_and_nothing_else():
    assert [f.name for f in dataclasses.fields(RunConfig)] == list(RUN_SCHEMA["properties"])
    for key, spec in RUN_SCHEMA["properties"].items():
        assert spec.get("description"), key
        default = next(f for f in dataclasses.fields(RunConfig) if f.name == key)
        assert default.name == key


def test_the_cli_defaults_are_the_config_defaults():
    """``agc run`` with no option and ``RunConfig()`` are the same run."""
    args = build_parser().parse_args(["run"])
    assert config_from_args(args) == RunConfig()


def test_the_cli_choices_come_from_the_schema():
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    choices = {a.dest: a.choices for a in run_parser._actions if a.choices}
    assert choices["engine"] == list(ENGINES)
    assert choices["mode"] == list(LOCAL_MODES)
    assert choices["data_lake"] == ["copy", "only", "off"]
    assert choices["io_branches"] == RUN_SCHEMA["properties"]["io_branches"]["enum"]


def test_every_cli_option_maps_onto_the_config():
    argv = ["run", "--catalog", "c.json", "--n-files", "2", "--samples", "ttbar__nominal",
            "--no-systematics", "--seed", "9", "--eos", "--mirror", "/m", "--backend", "local",
            "--mode", "dask", "--workers", "3", "--engine", "dask-awkward", "--chunksize", "7",
            "--cache", "/c", "--data-lake", "off", "--no-fit", "--output", "/o", "--label", "L",
            "--xcache", "root://x:1094"]  # fmt: skip
    config = config_from_args(build_parser().parse_args(argv))
    assert config == RunConfig(
        catalog="c.json", n_files=2, samples=("ttbar__nominal",), systematics=False, seed=9,
        eos=True, mirror="/m", xcache="root://x:1094", mode="dask", workers=3,
        engine="dask-awkward", chunksize=7, cache="/c", data_lake="off", fit=False,
        output_dir="/o", label="L",
    )  # fmt: skip


def test_one_option_checked_alone():
    check_value("mode", "dask")
    with pytest.raises(ConfigError, match="workers=0"):
        check_value("workers", 0)


def test_profiles_share_the_run_level_definitions(tmp_path):
    """A profile's ``workers`` and ``local.mode`` are checked with the run schema's rules."""
    from backends.profiles import PROFILE_SCHEMA, ProfileError, load_profile

    assert PROFILE_SCHEMA["properties"]["local"]["properties"]["mode"]["enum"] == list(LOCAL_MODES)
    base = {"backend": "local", "worker": {"cores": 1, "memory": "1GB"}}
    with pytest.raises(ProfileError, match="local.mode: 'threads' is not one of"):
        load_profile({**base, "local": {"mode": "threads"}})
    with pytest.raises(ProfileError, match="workers: 0 is less than the minimum of 1"):
        load_profile({**base, "workers": 0})


def test_scenario_points_are_checked_when_the_file_is_read(tmp_path):
    from agc.bench import BenchError, load_scenarios

    text = """
datasets:
  tiny: {layout: minimal, seed: 1, events: {ttbar__nominal: [1, 100]}}
scenarios:
  s:
    dataset: tiny
    points:
      - {label: fine, mode: inprocess}
      - {label: broken, mode: inprocess, chunksize: -1}
"""
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(BenchError, match="scenario 's', point 'broken': option chunksize=-1"):
        load_scenarios(path)
    path.write_text(text.replace("chunksize: -1", "chunk_size: 5"))
    with pytest.raises(BenchError, match="chunk_size: not a run option"):
        load_scenarios(path)
