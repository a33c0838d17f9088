"""The real AGC catalog, N files per process, URL rewriting and chunking (spec §1)."""

import json

import pytest

from agc.catalog import (
    CatalogError,
    build_fileset,
    chunk_ranges,
    load_catalog,
    make_chunks,
    rewrite_url,
)


@pytest.fixture(scope="module")
def real():
    return load_catalog("agc")


@pytest.mark.parametrize(
    ("n", "files", "events"),
    [
        (1, 9, 10_455_719),
        (2, 18, 19_497_435),
        (5, 43, 47_996_231),
        (10, 79, 90_546_458),
        (-1, 787, 940_160_174),
    ],
)
def test_n_files_per_process_matches_spec_table(real, n, files, events):
    fileset = build_fileset(*real, n_files=n)
    assert len(fileset) == 9
    assert sum(len(s.files) for s in fileset.values()) == files
    assert sum(s.nevts for s in fileset.values()) == events


@pytest.mark.parametrize(
    ("sample", "w1", "wall"),
    [
        ("ttbar__nominal", 1.84753, 0.00893005),
        ("wjets__nominal", 41.8835, 0.120621),
        ("single_top_s_chan__nominal", 0.0176084, 0.00388131),
        ("ttbar__PS_var", 1.88165, 0.127496),
    ],
)
def test_weights_match_spec(real, sample, w1, wall):
    assert build_fileset(*real, n_files=1)[sample].weight == pytest.approx(w1, rel=1e-5)
    assert build_fileset(*real, n_files=-1)[sample].weight == pytest.approx(wall, rel=1e-5)


def test_chunking_follows_coffea_rule(real):
    assert len(make_chunks(build_fileset(*real, n_files=1), 200_000)) == 52
    assert len(make_chunks(build_fileset(*real, n_files=5), 200_000)) == 239
    ranges = chunk_ranges(1_334_428, 200_000)
    assert len(ranges) == 7 and ranges[0] == (0, 190_633) and ranges[-1][1] == 1_334_428
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert chunk_ranges(50, 200_000) == [(0, 50)]


def test_url_rewriting(tmp_path):
    url = "https://xrootd-local.unl.edu:1094//store/user/AGC/nanoAOD/TT/cms_0001.root"
    assert rewrite_url(url, eos=True) == (
        "root://eospublic.cern.ch//eos/opendata/cms/upload/agc/1.0.0/TT/cms_0001.root"
    )
    assert rewrite_url(url, xcache="root://cache.site:1094") == (
        "root://cache.site:1094//store/user/AGC/nanoAOD/TT/cms_0001.root"
    )
    assert rewrite_url(url, mirror=tmp_path) == str(
        tmp_path / "store/user/AGC/nanoAOD/TT/cms_0001.root"
    )
    assert rewrite_url("a/b.root", base_dir=tmp_path) == str(tmp_path / "a/b.root")
    assert rewrite_url("a/b.root", base_dir=tmp_path, xcache="root://127.0.0.1:1095") == (
        f"root://127.0.0.1:1095//{str(tmp_path).lstrip('/')}/a/b.root"
    )


def test_relative_paths_resolve_against_the_catalog(tmp_path):
    (tmp_path / "cat.json").write_text(
        json.dumps(
            {"ttbar": {"nominal": {"nevts_total": 10, "files": [{"path": "f.root", "nevts": 10}]}}}
        )
    )
    fileset = build_fileset(*load_catalog(tmp_path / "cat.json"))
    assert fileset["ttbar__nominal"].files[0].path == str(tmp_path / "f.root")


def test_bad_catalogs_and_options(tmp_path, real):
    with pytest.raises(CatalogError, match="no such file"):
        load_catalog(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CatalogError, match="bad.json: not valid JSON"):
        load_catalog(tmp_path / "bad.json")
    (tmp_path / "shape.json").write_text(json.dumps({"ttbar": {"nominal": {"nevts": 3}}}))
    with pytest.raises(CatalogError, match="ttbar/nominal needs 'files'"):
        load_catalog(tmp_path / "shape.json")
    with pytest.raises(CatalogError, match="--n-files 0"):
        build_fileset(*real, n_files=0)
    with pytest.raises(CatalogError, match="--samples: ttbar__bogus"):
        build_fileset(*real, samples=("ttbar__bogus",))
    with pytest.raises(CatalogError, match="--chunksize 0"):
        chunk_ranges(10, 0)
