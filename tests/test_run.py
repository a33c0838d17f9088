"""End-to-end runs on small synthetic data: outputs, chunking independence, bad input."""

import json
import shutil

import pytest
import uproot
from conftest import assert_same_histograms

from agc import RunConfig, run
from agc.cli import main
from agc.errors import UserError


def _config(catalog, **kw):
    kw.setdefault("mode", "inprocess")
    return RunConfig(catalog=str(catalog), **kw)


@pytest.fixture(scope="module")
def reference_run(small_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "reference"
    return run(_config(small_catalog, chunksize=100_000, output_dir=str(out)), progress=False)


def test_full_run_writes_all_outputs(reference_run):
    r = reference_run
    names = sorted(r.histograms)
    assert len(names) == 124  # 62 per region, pseudodata included
    written = uproot.open(r.run_dir / "histograms.root").keys(cycle=False)
    data = json.loads((r.run_dir / "histograms.json").read_text())
    assert sorted(written) == sorted(data)
    assert all(len(v["contents"]) == 27 and len(v["edges"]) == 26 for v in data.values())
    summary = json.loads((r.run_dir / "summary.json").read_text())
    assert summary["events"] == 3000 * 2 + 2000 * 7 + 4000
    for sample in ("ttbar__nominal", "ttbar__PS_var", "single_top_tW__nominal"):
        assert summary["yields"][sample]["4j1b"] > 0 and summary["yields"][sample]["4j2b"] > 0
    assert (r.run_dir / "metrics" / "runs.csv").read_text().count("\n") == 2
    assert not list(r.run_dir.parent.glob(".*.partial"))


def test_pseudodata_is_built_from_the_run(reference_run):
    h = reference_run.histograms
    expected = (
        h["4j2b_ttbar_ME_var"].sum(flow=True).value + h["4j2b_ttbar_PS_var"].sum(flow=True).value
    ) / 2 + h["4j2b_wjets"].sum(flow=True).value
    assert h["4j2b_pseudodata"].sum(flow=True).value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("chunksize", "options"),
    [
        (700, {"mode": "inprocess"}),
        (1100, {"mode": "processes", "workers": 2}),
    ],
)
def test_same_histograms_whatever_chunking_and_workers(
    small_catalog, reference_run, chunksize, options
):
    other = run(
        _config(small_catalog, chunksize=chunksize, **options),
        progress=False,
        write=False,
    )
    assert other.chunks > reference_run.chunks
    # pt_res_up included: the smear is seeded per jet, not per chunk
    # equal up to float summation order (chunk partial sums differ with the chunk size)
    assert_same_histograms(reference_run.histograms, other.histograms, rtol=1e-12)


def test_validate_command_accepts_own_output_and_rejects_changed(reference_run, tmp_path, capsys):
    ref = tmp_path / "ref.json"
    shutil.copy(reference_run.run_dir / "histograms.json", ref)
    assert main(["validate", str(reference_run.run_dir), "--reference", str(ref)]) == 0
    data = json.loads(ref.read_text())
    data["4j1b_ttbar"]["contents"][12] += 50.0
    ref.write_text(json.dumps(data))
    assert main(["validate", str(reference_run.run_dir), "--reference", str(ref)]) == 1
    assert "4j1b_ttbar: bins 12-12 differ" in capsys.readouterr().out


def test_io_only_reads_the_same_files(small_catalog):
    r = run(_config(small_catalog, io_only=True), progress=False, write=False)
    assert r.events == 3000 * 2 + 2000 * 7 + 4000
    assert r.bytes_read > 0
    assert not any(h.sum().value for h in r.histograms.values())


# ---------------------------------------------------------------------------------- bad input


def _one_file_catalog(tmp_path, path, nevts=2000):
    cat = tmp_path / "catalog.json"
    cat.write_text(
        json.dumps(
            {
                "ttbar": {
                    "nominal": {
                        "nevts_total": nevts,
                        "files": [{"path": str(path), "nevts": nevts}],
                    }
                }
            }
        )
    )
    return cat


def _a_file(small_catalog):
    return (
        small_catalog.parent
        / json.loads(small_catalog.read_text())["ttbar"]["PS_var"]["files"][0]["path"]
    )


def _cli_fails(args, capsys, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_input_file(tmp_path, capsys):
    cat = _one_file_catalog(tmp_path, tmp_path / "gone.root")
    out = tmp_path / "out"
    _cli_fails(
        ["run", "--catalog", str(cat), "--mode", "inprocess", "--output", str(out), "--quiet"],
        capsys,
        "gone.root: no such file",
    )
    assert not out.exists() and not list(tmp_path.glob(".out.partial"))


def test_truncated_input_file(tmp_path, small_catalog, capsys):
    broken = tmp_path / "truncated.root"
    data = _a_file(small_catalog).read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    cat = _one_file_catalog(tmp_path, broken)
    _cli_fails(
        [
            "run",
            "--catalog",
            str(cat),
            "--mode",
            "inprocess",
            "--output",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
        "truncated.root",
        "re-generate or re-copy",
    )
    assert not (tmp_path / "o").exists()


def test_corrupt_input_file(tmp_path, capsys):
    junk = tmp_path / "junk.root"
    junk.write_bytes(b"root" + bytes(range(256)) * 40)
    cat = _one_file_catalog(tmp_path, junk)
    _cli_fails(
        [
            "run",
            "--catalog",
            str(cat),
            "--mode",
            "inprocess",
            "--quiet",
            "--output",
            str(tmp_path / "o"),
        ],
        capsys,
        "junk.root: not a readable ROOT file",
    )


def test_wrong_tree_name(tmp_path, small_catalog):
    src = _a_file(small_catalog)
    other = tmp_path / "renamed.root"
    with uproot.open(src) as f, uproot.recreate(other) as g:
        g.mktree("Runs", {"run": "uint32"}).extend({"run": f["Events"]["run"].array(library="np")})
    with pytest.raises(
        UserError, match="renamed.root: no tree 'Events' in the file \\(trees: Runs\\)"
    ):
        run(_config(_one_file_catalog(tmp_path, other)), progress=False, write=False)


def test_missing_branch(tmp_path, small_catalog):
    src = _a_file(small_catalog)
    other = tmp_path / "nomuon.root"
    with uproot.open(src) as f, uproot.recreate(other) as g:
        arrays = f["Events"].arrays(
            filter_name=["Jet_*", "Electron_*", "run", "event", "luminosityBlock"], how="zip"
        )
        data = {field: arrays[field] for field in arrays.fields}
        g.mktree("Events", {k: v.type for k, v in data.items()}).extend(data)
    with pytest.raises(UserError, match="nomuon.root: tree 'Events' lacks branch\\(es\\) Muon_pt"):
        run(_config(_one_file_catalog(tmp_path, other)), progress=False, write=False)


def test_catalog_promising_more_events_than_the_file(tmp_path, small_catalog):
    cat = _one_file_catalog(tmp_path, _a_file(small_catalog), nevts=5000)
    with pytest.raises(UserError, match="the file has 2000"):
        run(_config(cat), progress=False, write=False)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--chunksize", "0"], "--chunksize 0: 0 is less than the minimum of 1"),
        (["--workers", "-2"], "--workers -2: -2 is less than the minimum of 1"),
        (["--n-files", "0"], "--n-files 0: 0 is not a positive number of files per sample"),
        (["--backend", "nope"], "--backend: invalid choice: 'nope'"),
        (["--mode", "threads"], "--mode: invalid choice: 'threads'"),
        (["--io-only", "--io-branches", "99"], "--io-branches: invalid choice: '99'"),
        (["--io-branches", "4.1"], "--io-branches '4.1': only applies with io_only"),
        (["--xcache", "http://cache"], "--xcache 'http://cache': 'http://cache' is not an XRootD"),
    ],
)
def test_bad_options(small_catalog, tmp_path, capsys, args, needle):
    argv = [
        "run",
        "--catalog",
        str(small_catalog),
        "--quiet",
        "--output",
        str(tmp_path / "o"),
        *args,
    ]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse rejects malformed values itself
        code = exit_.code
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_output_directory_of_the_user_is_not_overwritten(small_catalog, tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    with pytest.raises(UserError, match="exists and is not a run directory"):
        run(
            _config(small_catalog, samples=("ttbar__PS_var",), output_dir=str(precious)),
            progress=False,
        )
    assert (precious / "thesis.tex").read_text() == "..."


def test_coffea_nanoevents_give_the_same_histograms(small_catalog):
    """The analysis on coffea NanoEvents (the reference's reader) equals the uproot path."""
    import warnings

    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory
    from conftest import assert_same_histograms

    from agc.analysis import process_events
    from agc.reader import read_chunk
    from agc.vocabulary import ANALYSIS_BRANCHES

    path = str(
        small_catalog.parent
        / json.loads(small_catalog.read_text())["ttbar"]["nominal"]["files"][0]["path"]
    )
    NanoAODSchema.warn_missing_crossrefs = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nano = NanoEventsFactory.from_root(
            {path: "Events"}, schemaclass=NanoAODSchema, mode="virtual"
        ).events()
    flat, _ = read_chunk(path, ANALYSIS_BRANCHES, 0, len(nano))
    kw = {"process": "ttbar", "variation": "nominal", "weight": 1.7}
    ours, theirs = process_events(flat, **kw), process_events(nano, **kw)
    assert sum(h.sum().value for h in ours.values()) > 0
    assert_same_histograms(ours, theirs, rtol=0)


def test_bit_identical_whatever_the_workers(small_catalog, reference_run):
    """Same chunks on 2 pool workers: results are merged in chunk order, so not a bit differs."""
    other = run(
        _config(small_catalog, chunksize=100_000, mode="processes", workers=2),
        progress=False,
        write=False,
    )
    assert_same_histograms(reference_run.histograms, other.histograms, rtol=0)
