"""The ``agc`` command, driven through ``agc.cli.main``: generate, fit, backends, bench and
report, and what ``agc run`` prints or leaves behind when interrupted or served by the cache."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import statistics
import subprocess
from pathlib import Path

import awkward as ak
import numpy as np
import pandas as pd
import pytest
import uproot

from agc import bench, engines
from agc.cli import main
from agc.vocabulary import SAMPLES, split_sample_key


def exit_code(argv: list[str]) -> int:
    """``main(argv)``'s exit status, also when argparse rejects the arguments (SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def catalog_files(catalog: Path) -> dict[str, list[dict]]:
    """``{fileset key: [{"path": absolute path, "nevts": n}, ...]}`` of a catalog.json."""
    data = json.loads(catalog.read_text())
    return {
        f"{process}__{variation}": [
            {"path": catalog.parent / f["path"], "nevts": f["nevts"]} for f in entry["files"]
        ]
        for process, variations in data.items()
        for variation, entry in variations.items()
    }


def coffea_chunks(nevts: int, chunksize: int) -> int:
    """How many chunks a file gets: coffea's rule, max(round(nevts / chunksize), 1)."""
    return max(round(nevts / chunksize), 1)


# ------------------------------------------------------------------------------ agc generate


def _generate(out: Path, *, events: int, files: int, seed: int, workers: int = 1) -> list[str]:
    return [
        "generate",
        "--output",
        str(out),
        "--events",
        str(events),
        "--files",
        str(files),
        "--layout",
        "minimal",
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--quiet",
    ]


def _jet_pt(catalog: Path) -> dict[str, ak.Array]:
    out = {}
    for files in catalog_files(catalog).values():
        for f in files:
            with uproot.open(f["path"]) as root:
                out[f["path"].relative_to(catalog.parent).as_posix()] = root["Events"][
                    "Jet_pt"
                ].array()
    return out


def _same_jagged(a: ak.Array, b: ak.Array) -> bool:
    return np.array_equal(ak.num(a), ak.num(b)) and np.array_equal(
        ak.to_numpy(ak.flatten(a)), ak.to_numpy(ak.flatten(b))
    )


def test_generate_prints_a_catalog_of_every_sample_matching_its_files(tmp_path, capsys):
    events, files = 301, 2  # 150 events per file: N // K, the remainder dropped
    assert main(_generate(tmp_path / "data", events=events, files=files, seed=3)) == 0
    out = capsys.readouterr().out
    match = re.search(r"^Catalog: (.+)$", out, re.M)
    assert match, out
    catalog = Path(match.group(1))
    assert catalog.is_file() and catalog.parent == tmp_path / "data"

    data = json.loads(catalog.read_text())
    listed = catalog_files(catalog)
    assert sorted(listed) == sorted(SAMPLES)
    for sample in SAMPLES:
        process, variation = split_sample_key(sample)
        entry = data[process][variation]
        assert len(entry["files"]) == files, sample
        assert [f["nevts"] for f in entry["files"]] == [events // files] * files, sample
        assert entry["nevts_total"] == files * (events // files)
        paths = [f["path"] for f in listed[sample]]
        assert len(set(paths)) == files  # K distinct files
        for f in listed[sample]:
            with uproot.open(f["path"]) as root:
                assert root["Events"].num_entries == f["nevts"], f["path"]
                assert "Jet_pt" in root["Events"]


def test_generate_is_deterministic_in_the_seed_and_independent_of_workers(tmp_path, capsys):
    assert main(_generate(tmp_path / "a", events=200, files=2, seed=11)) == 0
    assert main(_generate(tmp_path / "b", events=200, files=2, seed=11, workers=2)) == 0
    assert main(_generate(tmp_path / "c", events=200, files=2, seed=12)) == 0
    capsys.readouterr()
    a, b, c = (_jet_pt(tmp_path / d / "catalog.json") for d in "abc")
    assert sorted(a) == sorted(b) == sorted(c) and len(a) == 2 * len(SAMPLES)
    for name in a:
        assert len(a[name]) == 100 and ak.sum(ak.num(a[name])) > 0, name
        assert _same_jagged(a[name], b[name]), f"{name}: same seed, different Jet_pt"
        assert not _same_jagged(a[name], c[name]), f"{name}: another seed, same Jet_pt"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--layout", "compact"),
        ("--events", "0"),
        ("--files", "-1"),
        ("--compression", "BROTLI:3"),
        ("--compression", "ZLIB:fast"),
    ],
)
def test_generate_rejects_bad_options_naming_them(tmp_path, capsys, option, value):
    argv = _generate(tmp_path / "data", events=100, files=1, seed=1)
    i = argv.index(option) if option in argv else len(argv)
    argv[i : i + 2] = [option, value]
    assert exit_code(argv) == 2
    captured = capsys.readouterr()
    assert option in captured.err, captured.err
    assert "Catalog:" not in captured.out
    assert not (tmp_path / "data" / "catalog.json").exists()


# ----------------------------------------------------------------------------------- agc fit

#: The plots of a fit (tests/test_plots.py: BASE_PLOTS + FIT_PLOTS).
FIT_PLOT_NAMES = (
    "stack_4j1b",
    "stack_4j2b",
    "ttbar_btag_variations",
    "ttbar_jet_variations",
    "pulls",
    "data_mc_4j1b",
    "data_mc_4j2b",
)
FIT_LINE = re.compile(r"^(?P<poi>\w+) = (?P<best>-?\d+\.\d{3}) ± (?P<error>\d+\.\d{3})", re.M)


@pytest.fixture
def reference_copy(shared_data, tmp_path) -> Path:
    """The AGC reference histograms (1 file per process), copied alone into a folder."""
    src = shared_data / "agc" / "reference" / "histos_1_file_per_process.json"
    if not src.exists():
        pytest.skip(f"{src} not found")
    dst = tmp_path / "input" / "histos_1_file_per_process.json"
    dst.parent.mkdir()
    shutil.copy(src, dst)
    return dst


def _printed_fit(stdout: str, saved: dict) -> None:
    match = FIT_LINE.search(stdout)
    assert match, stdout
    assert match["poi"] == saved["poi"] == "ttbar_norm"
    assert float(match["best"]) == pytest.approx(saved["bestfit"], abs=5e-4)
    assert float(match["error"]) == pytest.approx(saved["uncertainty"], abs=5e-4)
    assert 0 < saved["uncertainty"] < saved["bestfit"]


@pytest.fixture
def read_only_reference(reference_copy, tmp_path):
    """The reference copy alone in a folder nothing can write to: a tmpfs remounted read-only
    (root ignores file modes), else a folder without write permission."""
    if os.geteuid() != 0:
        reference_copy.parent.chmod(0o555)
        yield reference_copy
        reference_copy.parent.chmod(0o755)
        return
    if shutil.which("mount") is None:
        pytest.skip("a read-only folder for root needs mount(8) and a tmpfs")
    point = tmp_path / "read-only"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(point)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        shutil.copy(reference_copy, point / reference_copy.name)
        subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        with pytest.raises(OSError):
            (point / "probe").write_text("")
        yield point / reference_copy.name
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def plot_labels(monkeypatch) -> list[tuple[str, str]]:
    """The (label, experiment) of every ``plots.make_plots`` call, which still draws."""
    from agc import plots

    calls: list[tuple[str, str]] = []
    real = plots.make_plots

    def recording(*args, **kwargs):
        calls.append((kwargs["label"], kwargs["experiment"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "make_plots", recording)
    return calls


@pytest.mark.slow
def test_fit_of_a_read_only_reference_writes_into_output_with_open_data_plots(
    read_only_reference, tmp_path, capsys, plot_labels
):
    from agc import plots

    out = tmp_path / "fit"
    before = sorted(p.name for p in read_only_reference.parent.iterdir())
    assert main(["fit", str(read_only_reference), "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    saved = json.loads((out / "fit_result.json").read_text())
    _printed_fit(stdout, saved)
    assert saved["info"]["input"] == str(read_only_reference)
    assert saved["info"]["n_files"] == 1  # weights recognised from the contents
    workspace = json.loads((out / "workspace.json").read_text())
    assert {c["name"] for c in workspace["channels"]} == {"4j1b CR", "4j2b SR"}
    assert f"Plots, workspace.json and fit_result.json in {out}/" in stdout
    assert plot_labels == [(plots.OPEN_DATA_LABEL, "CMS")]  # the real CMS inputs

    from PIL import Image

    for name in FIT_PLOT_NAMES:
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and min(image.size) >= 300, name
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF"), name
    assert sorted(p.name for p in read_only_reference.parent.iterdir()) == before


def test_fit_writes_into_the_working_directory_never_beside_its_input(
    reference_copy, tmp_path, monkeypatch, capsys
):
    here = tmp_path / "working"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["fit", str(reference_copy), "--no-plots"]) == 0
    stdout = capsys.readouterr().out
    saved = json.loads((here / "fit_result.json").read_text())
    _printed_fit(stdout, saved)
    assert (here / "workspace.json").is_file()
    assert f"workspace.json and fit_result.json in {here}/" in stdout
    assert "Plots" not in stdout
    assert [p.name for p in reference_copy.parent.iterdir()] == [reference_copy.name]
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.pdf"))


@pytest.mark.slow
def test_fit_of_a_synthetic_run_keeps_the_synthetic_label(
    small_catalog, reference_copy, tmp_path, capsys, plot_labels
):
    """A run directory of synthetic inputs: the small dataset's run, with histograms that fit
    (the small dataset has no W+jets event in 4j1b; the reference's stand in for its own)."""
    from agc import plots

    run_dir = tmp_path / "run"
    argv = ["run", "--catalog", str(small_catalog), "--mode", "inprocess", "--no-fit"]
    assert main([*argv, "--output", str(run_dir), "--quiet"]) == 0
    (run_dir / "histograms.root").unlink()
    shutil.copy(reference_copy, run_dir / "histograms.json")
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["weights"]  # the reference's weights, found from its contents
    (run_dir / "summary.json").write_text(json.dumps(summary))
    before = sorted(p.name for p in run_dir.iterdir())
    out = tmp_path / "fit"
    assert main(["fit", str(run_dir), "--output", str(out)]) == 0
    capsys.readouterr()
    assert plot_labels == [(plots.SYNTHETIC_LABEL, "AGC")]
    assert (out / "pulls.png").is_file() and (out / "fit_result.json").is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == before  # the run is left as it was
    argv = ["fit", str(run_dir), "--output", str(out), "--label", "L", "--experiment", "E"]
    assert main(argv) == 0  # --label and --experiment still choose
    assert plot_labels[-1] == ("L", "E")


def _summary(run_dir: Path, catalog: str) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"config": {"catalog": catalog}}))
    return run_dir


def test_synthetic_inputs_are_told_by_the_runs_catalog(small_catalog, tmp_path, caplog):
    from agc.cli import synthetic_inputs

    assert synthetic_inputs(_summary(tmp_path / "default", "synthetic")) is True
    assert synthetic_inputs(_summary(tmp_path / "real", "agc")) is False
    generated = _summary(tmp_path / "generated", str(small_catalog))
    assert synthetic_inputs(generated) is True
    assert synthetic_inputs(generated / "histograms.root") is True  # a file of the run
    renamed = tmp_path / "renamed" / "catalog.json"
    renamed.parent.mkdir()
    data = json.loads(small_catalog.read_text())
    for variations in data.values():
        for entry in variations.values():
            for f in entry["files"]:
                f["path"] = str(small_catalog.parent / f["path"]).replace("synth_", "cms_")
    renamed.write_text(json.dumps(data))
    assert synthetic_inputs(_summary(tmp_path / "other", str(renamed))) is False
    gone = _summary(tmp_path / "gone", str(tmp_path / "no-such" / "catalog.json"))
    assert synthetic_inputs(gone) is None
    assert "cannot tell whether" in caplog.text
    loose = tmp_path / "loose.json"  # a file outside any run: the AGC's reference JSONs
    loose.write_text("{}")
    assert synthetic_inputs(loose) is False


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty-folder", None),
        ("broken.json", "not JSON at all"),
        ("no-edges.json", json.dumps({"4j1b_ttbar": 1})),
        ("no-histograms.json", "{}"),
        ("a-list.json", "[1, 2, 3]"),
        (
            "text-edges.json",
            json.dumps({"4j1b_ttbar": {"edges": ["a", "b"], "contents": [1, 2, 3]}}),
        ),
    ],
)
def test_fit_of_something_that_is_no_histogram_file_names_it(tmp_path, capsys, name, content):
    path = tmp_path / name
    if content is None:
        path.mkdir()
        (path / "notes.txt").write_text("no histograms here")
    else:
        path.write_text(content)
    assert exit_code(["fit", str(path), "--output", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert str(path) in captured.err and captured.err.startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    assert not list(tmp_path.rglob("fit_result.json")) and not list(tmp_path.rglob("*.png"))


# ------------------------------------------------------------------------------ agc backends


def test_backends_lists_each_backend_with_its_description(capsys):
    from backends.base import get_backend

    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(names)
    assert {"local", "slurm", "htcondor", "dirac"} <= set(names)
    by_name = dict(zip(names, lines, strict=True))
    for name in ("local", "slurm", "htcondor", "dirac"):
        description = get_backend(name).description
        assert description and not description.startswith("(")
        assert by_name[name] == f"{name:10s} {description}"


# ------------------------------------------------------------------------- agc bench / report

BENCH_SCENARIOS = """
datasets:
  mini:
    layout: minimal
    seed: 11
    events: {ttbar__nominal: [1, 900], wjets__nominal: [2, 300]}
scenarios:
  sweep:
    description: two chunk sizes,
      in process
    dataset: mini
    base: {mode: inprocess, systematics: false}
    points:
      - {label: small chunks, chunksize: 300}
      - {label: one chunk per file, chunksize: 5000}
  unused:
    description: listed, never run here
    dataset: mini
    vary: {chunksize: [100, 200]}
"""
#: The points of 'sweep': label -> chunksize.
SWEEP = {"small chunks": 300, "one chunk per file": 5000}
MINI_FILES = [900, 300, 300]  # events of each file of the 'mini' dataset
REPEATS, WARMUP = 2, 1


@pytest.fixture(scope="module")
def bench_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scenarios") / "scenarios.yaml"
    path.write_text(BENCH_SCENARIOS)
    return path


@pytest.fixture(scope="module")
def bench_run(bench_file, tmp_path_factory):
    """``agc bench sweep`` into a results folder, its data in $AGC_BENCH_DATA: (results folder,
    data folder, stdout)."""
    root = tmp_path_factory.mktemp("bench")
    results, data = root / "results", root / "data"
    argv = ["bench", "sweep", "--scenarios", str(bench_file), "--results", str(results)]
    argv.append("--allow-dirty")  # the tests run in checkouts with changes too
    argv += ["--repeats", str(REPEATS), "--warmup", str(WARMUP), "--quiet"]
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("AGC_BENCH_DATA", str(data))
        code = main(argv)
    assert code == 0
    return results, data, stdout.getvalue()


def test_bench_list_prints_every_scenario(bench_file, capsys):
    assert main(["bench", "list", "--scenarios", str(bench_file), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["sweep", "unused"]
    assert lines[0].split(None, 1)[1] == "two chunk sizes, in process"
    assert lines[1].split(None, 1)[1] == "listed, never run here"


def test_bench_records_every_run_of_every_point(bench_run, bench_file):
    results, data, stdout = bench_run
    assert stdout.strip() == f"sweep: records in {results / 'raw'}"
    spec = bench.load_scenarios(bench_file)["datasets"]["mini"]
    catalog = data / f"mini-{bench.dataset_key(spec)}" / "catalog.json"
    generated = catalog_files(catalog)  # the dataset went to $AGC_BENCH_DATA
    assert sorted(f["nevts"] for files in generated.values() for f in files) == sorted(MINI_FILES)

    runs = pd.read_csv(results / "raw" / "sweep-runs.csv")
    assert len(runs) == len(SWEEP) * (REPEATS + WARMUP)
    assert set(runs["scenario"]) == {"sweep"}
    assert runs["dataset"].str.startswith("mini-").all()
    for point, g in runs.groupby("point"):
        assert point in SWEEP
        assert sorted(g["warmup"]) == [False] * REPEATS + [True] * WARMUP
        assert sorted(g.loc[~g["warmup"], "repeat"]) == list(range(REPEATS))
        assert set(g["chunksize"]) == {SWEEP[point]}
        assert set(g["events"]) == {sum(MINI_FILES)}
        assert set(g["files"]) == {len(MINI_FILES)}
        assert set(g["chunks"]) == {sum(coffea_chunks(n, SWEEP[point]) for n in MINI_FILES)}
        assert not g["systematics"].any() and (g["events_per_second"] > 0).all()
    assert set(runs["point"]) == set(SWEEP)


def test_report_summarises_the_bench_runs(bench_run, capsys):
    results, _, _ = bench_run
    assert main(["report", str(results)]) == 0
    stdout = capsys.readouterr().out
    assert f"report: {results / 'index.html'}" in stdout
    assert f"summary: {results / 'README.md'}" in stdout

    runs = pd.read_csv(results / "raw" / "sweep-runs.csv")
    summary = pd.read_csv(results / "summary.csv")
    assert sorted(summary["point"]) == sorted(SWEEP) and set(summary["scenario"]) == {"sweep"}
    page = (results / "index.html").read_text()
    readme = (results / "README.md").read_text()
    for _, row in summary.iterrows():
        measured = runs[(runs["point"] == row["point"]) & ~runs["warmup"]]
        rates = [float(v) for v in measured["events_per_second"]]
        assert row["runs"] == REPEATS
        assert row["events"] == sum(MINI_FILES)
        assert row["events_per_s_median"] == pytest.approx(statistics.median(rates))
        assert row["events_per_s_min"] == pytest.approx(min(rates))
        assert row["events_per_s_max"] == pytest.approx(max(rates))
        assert f"<td>{row['point']}</td>" in page
        assert f"{row['events_per_s_median']:,.0f}" in page
        assert f"| {row['point']} |" in readme


BAD_POINTS = [
    ({"label": "p1", "chunk_size": 5}, ["point 'p1'", "chunk_size", "not a run option"]),
    ({"label": "p2", "chunksize": -1}, ["point 'p2'", "chunksize", "-1"]),
    ({"chunk_size": 5}, ["point 'chunk_size=5'", "chunk_size"]),  # label made from the options
    ({"label": "p4", "mode": "threads"}, ["point 'p4'", "mode", "threads"]),
]


@pytest.mark.parametrize(("point", "needles"), BAD_POINTS)
def test_bench_list_checks_every_point_of_the_file(tmp_path, capsys, point, needles):
    spec = {
        "datasets": {
            "mini": {"layout": "minimal", "seed": 1, "events": {"ttbar__nominal": [1, 9]}}
        },
        "scenarios": {
            "fine": {"dataset": "mini", "points": [{"label": "ok", "chunksize": 5}]},
            "bad": {"dataset": "mini", "base": {"mode": "inprocess"}, "points": [point]},
        },
    }
    path = tmp_path / "scenarios.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    assert exit_code(["bench", "list", "--scenarios", str(path), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # the file is refused as a whole: not even 'fine' is listed
    for needle in [str(path), "scenario 'bad'", *needles]:
        assert needle in captured.err, captured.err


def test_bench_of_an_unknown_scenario_names_the_choices(bench_file, tmp_path, capsys):
    argv = ["bench", "nope", "--scenarios", str(bench_file), "--results", str(tmp_path / "r")]
    assert exit_code([*argv, "--quiet"]) == 2
    assert "scenario 'nope': unknown; choose one of sweep, unused" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_report_of_a_scenario_whose_points_were_all_skipped(tmp_path, monkeypatch, capsys):
    spec = {
        "datasets": {
            "one": {"layout": "minimal", "seed": 2, "events": {"ttbar__nominal": [1, 50]}}
        },
        "scenarios": {
            "elsewhere": {
                "dataset": "one",
                "points": [{"label": "cluster", "mode": "inprocess", "requires": "exit 3"}],
            }
        },
    }
    path = tmp_path / "scenarios.yaml"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv("AGC_BENCH_DATA", str(tmp_path / "data"))
    results = tmp_path / "results"
    argv = ["bench", "elsewhere", "--scenarios", str(path), "--results", str(results), "--quiet"]
    argv.append("--allow-dirty")
    assert main(argv) == 0
    assert not list((results / "raw").glob("*-runs.csv"))  # nothing measured
    capsys.readouterr()
    assert main(["report", str(results)]) == 0
    assert "Scenario elsewhere, cluster: not measured" in (results / "index.html").read_text()


def test_bench_progress_logging_is_set_up_once(bench_file, capsys):
    logger = logging.getLogger("agc.bench")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        main(["bench", "list", "--scenarios", str(bench_file)])
        after_one = len(logger.handlers)
        main(["bench", "list", "--scenarios", str(bench_file)])
        assert len(logger.handlers) == after_one
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        capsys.readouterr()


# ----------------------------------------------------------------------------------- agc run


def test_interrupted_run_leaves_no_output(small_catalog, tmp_path, monkeypatch, capsys):
    real = engines.process_chunk
    calls = []

    def interrupted_on_the_second_chunk(task):
        calls.append(task.index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(engines, "process_chunk", interrupted_on_the_second_chunk)
    out = tmp_path / "runs" / "out"
    out.parent.mkdir()
    argv = ["run", "--catalog", str(small_catalog), "--mode", "inprocess"]
    argv += ["--chunksize", "3000", "--output", str(out), "--quiet"]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert "interrupted" in captured.err
    assert "events in" not in captured.out  # no summary of a run that did not finish
    assert len(calls) == 2  # it stopped at the interrupt
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no .out.*.partial staging directory either


def test_run_interrupted_while_writing_discards_the_staging_directory(
    small_catalog, tmp_path, monkeypatch, capsys
):
    import agc.runner

    def interrupted(directory, *args, **kwargs):
        assert directory.name.startswith(".out.") and directory.name.endswith(".partial")
        assert (directory / "histograms.root").exists()  # staged, not yet in place
        raise KeyboardInterrupt

    monkeypatch.setattr(agc.runner, "write_record", interrupted)
    out = tmp_path / "runs" / "out"
    out.parent.mkdir()
    argv = ["run", "--catalog", str(small_catalog), "--mode", "inprocess", "--no-fit"]
    argv += ["--samples", "ttbar__PS_var", "--output", str(out), "--quiet"]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []


def _run_events_and_chunks(stdout: str) -> tuple[int, int]:
    match = re.search(r"^([\d,]+) events in (\d+) chunks on", stdout, re.M)
    assert match, stdout
    return int(match[1].replace(",", "")), int(match[2])


def test_run_says_how_many_chunks_came_from_the_cache(small_catalog, tmp_path, capsys):
    cache = tmp_path / "cache"
    files = catalog_files(small_catalog)
    total = sum(f["nevts"] for fs in files.values() for f in fs)
    chunks = {k: sum(coffea_chunks(f["nevts"], 3000) for f in fs) for k, fs in files.items()}
    first = ["ttbar__nominal", "wjets__nominal"]

    def agc_run(name: str, *extra: str) -> str:
        argv = ["run", "--catalog", str(small_catalog), "--mode", "inprocess", "--no-fit"]
        argv += ["--chunksize", "3000", "--cache", str(cache), "--quiet"]
        assert main([*argv, "--output", str(tmp_path / name), *extra]) == 0
        return capsys.readouterr().out

    stdout = agc_run("part", "--samples", *first)
    assert _run_events_and_chunks(stdout) == (
        sum(f["nevts"] for k in first for f in files[k]),
        sum(chunks[k] for k in first),
    )
    assert "from the cache" not in stdout  # an empty store: no hits
    assert re.search(r"s, [\d,]+ events/s \([\d,]+ per worker\)", stdout), stdout

    stdout = agc_run("all")
    assert _run_events_and_chunks(stdout) == (total, sum(chunks.values()))
    hits = sum(chunks[k] for k in first)
    assert f"{hits} of {sum(chunks.values())} chunks from the cache ({cache})" in stdout
    assert re.search(r"s, [\d,]+ events/s", stdout), stdout  # some chunks were processed

    stdout = agc_run("again")
    assert _run_events_and_chunks(stdout) == (total, sum(chunks.values()))
    n = sum(chunks.values())
    assert f"{n} of {n} chunks from the cache ({cache})" in stdout
    assert "events/s" in stdout and not re.search(r"[\d,]+ events/s", stdout), stdout
    assert "no processing rate: every chunk was a cache hit" in stdout
    # the per-sample table: every sample with the events of its files
    for sample, fs in files.items():
        row = re.search(rf"^{sample}\s+(\d+)\s", stdout, re.M)
        assert row and int(row[1]) == sum(f["nevts"] for f in fs), sample


def test_data_lake_only_prints_the_run_id_and_the_fetch_command(small_catalog, tmp_path, capsys):
    store = tmp_path / "store with space"
    argv = ["run", "--catalog", str(small_catalog), "--mode", "inprocess", "--no-fit"]
    argv += ["--samples", "ttbar__PS_var", "--cache", str(store), "--data-lake", "only"]
    assert main([*argv, "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "Outputs:" not in stdout  # no local run directory
    match = re.search(
        r"^Run (\S+): outputs .* only in the store (.+); get them with: (.+)$", stdout, re.M
    )
    assert match, stdout
    run_id, command = match[1], shlex.split(match[3])
    assert match[2] == str(store)
    assert command == ["agc", "fetch", run_id, "--cache", str(store)]
    to = tmp_path / "fetched"
    assert main([*command[1:], "--to", str(to)]) == 0  # the command works as printed
    assert (to / "histograms.root").is_file()
    assert json.loads((to / "summary.json").read_text())["run_id"] == run_id
