"""Site profiles: every shipped profile validates; a bad one fails up front, naming the key."""

from __future__ import annotations

import pytest
import yaml

from agc.cli import main
from agc.errors import UserError
from backends.base import get_backend
from backends.profiles import ProfileError, load_profile, shipped_profiles

GOOD = {"backend": "slurm", "worker": {"cores": 1, "memory": "1GB"}}


def _with(**changes):
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in GOOD.items()}
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(key)
        else:
            node[key] = value
    return data


def test_shipped_profiles_are_valid_and_documented():
    shipped = shipped_profiles()
    for name in (
        "slurm-local",
        "htcondor-coffea-casa",
        "htcondor-standin",
        "dirac-gridpp",
        "dirac-standin",
    ):
        assert name in shipped
    for name, path in shipped.items():
        profile = load_profile(name)
        assert profile.description, name
        assert path.read_text().startswith("#"), (
            f"{name}: starts with a comment saying what it is for"
        )
        get_backend(profile.backend)(profile=name)  # the backend accepts it too


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"worker.memroy": "1GB"},
            r"worker\.memroy: unknown key \(allowed here: .*container, cores, .*memory",
        ),
        ({"worker.memory": None}, r"worker\.memory: required \(memory per job"),
        ({"worker.cores": "two"}, r"worker\.cores: expected integer, got 'two'"),
        ({"worker.memory": "lots"}, r"worker\.memory: 'lots' is not a size such as 2GB"),
        ({"slurm.walltime": "1 hour"}, r"slurm\.walltime: '1 hour' is not a time such as 01:00:00"),
        ({"dirac.sites": {"A": -1}}, r"dirac\.sites: .* expected a site list .* counts"),
        ({"htcondor.universe": "grid"}, r"htcondor\.universe: 'grid' is not one of vanilla"),
        ({"workers": 0}, r"workers: 0 is less than the minimum of 1"),
        ({"queue": "debug"}, r"queue: unknown key"),
        ({"backend": "htcondor"}, r"worker\.disk: required \(scratch disk per job"),
        ({"stages": {"read": {"CPU": 1}, "gpu": {}}}, r"stages\.gpu: unknown key"),
        ({"stages": {"read": {"CPU": 1}, "analysis": {"GPU": 0}}}, r"stages\.analysis\.GPU: 0"),
    ],
)
def test_bad_profile_names_the_key(tmp_path, changes, message):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(_with(**changes)))
    with pytest.raises(ProfileError, match=message) as err:
        load_profile(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, UserError)


def test_profile_for_another_backend_is_refused():
    with pytest.raises(ProfileError, match="is for backend 'htcondor', not 'slurm'"):
        get_backend("slurm")(profile="htcondor-standin")


def test_unknown_profile_name_lists_the_shipped_ones():
    with pytest.raises(ProfileError, match="shipped: .*slurm-local"):
        load_profile("no-such-site")


def test_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("worker: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(path)


def test_bad_profile_fails_before_anything_is_submitted(tmp_path, small_catalog, capsys):
    """agc run with a bad profile exits 2 naming the key; the submit command never ran."""
    marker = tmp_path / "submitted"
    sbatch = tmp_path / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ntouch {marker}\necho 'Submitted batch job 1'\n")
    sbatch.chmod(0o755)
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(_with(**{"worker.memory": None, "slurm.submit_command": str(sbatch)}))
    )
    status = main(
        [
            "run",
            "--catalog",
            str(small_catalog),
            "--backend",
            "slurm",
            "--profile",
            str(path),
            "--quiet",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert status == 2
    assert "worker.memory: required" in capsys.readouterr().err
    assert not marker.exists()


def test_local_backend_takes_workers_and_mode_from_a_profile():
    backend = get_backend("local")(profile="local-dask")
    assert (backend.workers, backend.mode) == (2, "dask")
    backend = get_backend("local")(profile="local-dask", workers=1, mode="inprocess")
    assert (backend.workers, backend.mode) == (1, "inprocess")


def test_profiles_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("agc.cli.COMMAND_MODULES", ("backends.cli",))
    assert main(["profiles", "list"]) == 0
    listing = capsys.readouterr().out
    assert "dirac-gridpp" in listing and "slurm-local" in listing
    assert main(["profiles", "check", "slurm-local", "dirac-gridpp"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with(**{"worker.cores": 0})))
    capsys.readouterr()
    assert main(["profiles", "check", str(bad)]) == 2
    assert "worker.cores: 0 is less than the minimum of 1" in capsys.readouterr().err
    assert main(["profiles", "script", "dirac-gridpp", "--workers", "2"]) == 0
    assert capsys.readouterr().out.count('Executable = "/bin/sh";') == 2
    assert main(["profiles", "script", "htcondor-standin"]) == 0
    assert "Queue" in capsys.readouterr().out
