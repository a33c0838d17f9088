"""The ``agc`` command's habits: help for every option, ``-v`` before or after the command,
``--version``, a quiet end on a closed pipe, and ``agc validate``'s two comparisons."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agc import __version__
from agc.cli import BROKEN_PIPE_EXIT, build_parser, main


def _parsers(parser: argparse.ArgumentParser, prog: str = "agc"):
    """``(command line, parser)`` of ``agc`` and of every subcommand, at every depth."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def _options():
    return [
        (prog, action)
        for prog, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
    ]


def test_the_walk_reaches_nested_subcommands():
    progs = {prog for prog, _ in _parsers(build_parser())}
    assert {"agc", "agc run", "agc cache ls", "agc fetch", "agc bench", "agc fit"} <= progs


def test_every_option_of_every_command_has_help():
    missing = [
        f"{prog} {'/'.join(action.option_strings) or action.dest}"
        for prog, action in _options()
        if not (action.help or "").strip()
    ]
    assert missing == [], "options without help: " + ", ".join(missing)


def test_no_help_cites_section_numbers():
    cited = [
        f"{prog} {'/'.join(action.option_strings) or action.dest}: {action.help}"
        for prog, action in _options()
        if action.help and re.search(r"§|\bspec\b", action.help)
    ]
    cited += [
        f"{prog}: {parser.description}"
        for prog, parser in _parsers(build_parser())
        if parser.description and "§" in parser.description
    ]
    assert cited == []


def test_fit_help_names_the_plot_labels_it_picks():
    from agc import plots

    (label,) = [a.help for prog, a in _options() if prog == "agc fit" and a.dest == "label"]
    assert f"'{plots.SYNTHETIC_LABEL}'" in label and f"'{plots.OPEN_DATA_LABEL}'" in label


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["backends"], 0),
        (["-v", "backends"], 1),
        (["backends", "-v"], 1),
        (["backends", "--verbose"], 1),
        (["-v", "backends", "-v"], 2),
        (["backends", "-vv"], 2),
    ],
)
def test_verbose_before_or_after_the_command(argv, level, monkeypatch):
    seen = []
    monkeypatch.setattr("agc.cli.cmd_backends", lambda args: seen.append(args.verbose) or 0)
    assert main(argv) == 0
    assert seen == [level]


@pytest.mark.parametrize("argv", [["run", "-v"], ["cache", "ls", "-v"], ["bench", "list", "-v"]])
def test_every_command_takes_verbose(argv):
    assert build_parser().parse_args(argv).sub_verbose == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"agc {__version__}"


AGC = f"{sys.executable} -m agc"


@pytest.mark.parametrize(
    "command",
    [
        "{agc} backends | head -n1",
        "{agc} backends | true",  # the reader is gone before anything is written
        "{agc} cache ls --cache {store} | head -n1",
        "{agc} cache ls --cache {store} | true",
    ],
)
def test_a_closed_pipe_ends_quietly(command, tmp_path):
    line = command.format(agc=AGC, store=tmp_path / "store")
    done = subprocess.run(
        ["bash", "-c", line + '; echo "status ${PIPESTATUS[0]}"'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    status = int(done.stdout.rsplit("status ", 1)[1])
    assert status in (0, BROKEN_PIPE_EXIT), done.stdout  # 0: all was written before it closed
    if line.endswith("| true"):
        assert status == BROKEN_PIPE_EXIT


# -------------------------------------------------------------------------------- agc validate


@pytest.fixture(scope="module")
def two_runs(small_catalog, tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two runs of the same synthetic inputs (the second with other chunks) and one of two of
    their samples."""
    root = tmp_path_factory.mktemp("runs")
    argv = ["run", "--catalog", str(small_catalog), "--mode", "inprocess", "--no-fit", "--quiet"]
    runs = []
    for name, extra in (
        ("a", ["--chunksize", "3000"]),
        ("b", ["--chunksize", "1000"]),
        ("c", ["--samples", "ttbar__nominal", "wjets__nominal"]),
    ):
        assert main([*argv, *extra, "--output", str(root / name)]) == 0
        runs.append(root / name)
    return runs[0], runs[1], runs[2]


def test_validate_says_it_compares_with_the_real_data_reference_and_warns_a_synthetic_run(
    two_runs, shared_data, capsys
):
    reference = shared_data / "agc" / "reference" / "histos_1_file_per_process.json"
    run, _, _ = two_runs
    assert main(["validate", str(run), "--reference", str(reference)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"Comparing the histograms of {run / 'histograms.root'} with the AGC's reference "
        "histograms of the real CMS open-data inputs at 1 file(s) per process "
        f"({reference})"
    )
    assert lines[1].startswith(f"Note: {run} is a run of synthetic inputs: it is not expected")
    assert f"agc validate {run} --against OTHER_RUN" in lines[1]
    assert lines[-1].startswith("FAILED: ")


def test_validate_of_the_reference_against_itself_has_no_synthetic_note(
    shared_data, tmp_path, capsys
):
    reference = shared_data / "agc" / "reference" / "histos_5_file_per_process.json"
    assert main(["validate", str(reference), "--reference", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "at 5 file(s) per process" in out and "Note:" not in out
    assert out.splitlines()[-1].startswith("OK: ")


def test_validate_against_another_run(two_runs, capsys):
    a, b, c = two_runs
    assert main(["validate", str(a), "--against", str(b), "--rtol", "1e-9"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"Comparing the histograms of {a / 'histograms.root'}")
    assert "within a relative tolerance of 1e-09" in out
    assert out.splitlines()[-1] == "OK: 0 difference(s)"

    assert main(["validate", str(a), "--against", str(a / "histograms.root")]) == 0
    assert "bit for bit" in capsys.readouterr().out

    assert main(["validate", str(a), "--against", str(c)]) == 1
    out = capsys.readouterr().out
    assert "ERROR: 4j1b_ttbar_ME_var: only in the first" in out, out  # a sample c left out
    assert out.splitlines()[-1].startswith("FAILED: ")


def test_validate_needs_one_of_reference_or_against(two_runs, capsys):
    a, b, _ = two_runs
    for argv in (["validate", str(a)], ["validate", str(a), "--reference", "x", "--against", "y"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    assert "--reference" in capsys.readouterr().err


def test_compare_histograms_names_each_difference():
    import hist

    from agc.cli import compare_histograms

    def h(values, edges=(0, 1, 2)):
        out = hist.Hist.new.Variable(list(edges)).Weight()
        out.view()["value"] = values
        out.view()["variance"] = values
        return out

    a = {"x": h([1.0, 2.0]), "y": h([1.0, 1.0]), "only_a": h([0, 0])}
    b = {"x": h([1.0, 2.0 + 1e-12]), "y": h([1.0, 1.0], (0, 1, 3)), "only_b": h([0, 0])}
    assert compare_histograms(a, b) == [
        "only_a: only in the first",
        "only_b: only in the second",
        "x: 1 bin(s) of values differ (first: bin 2, 2.0 vs 2.000000000001)",
        "x: 1 bin(s) of variances differ (first: bin 2, 2.0 vs 2.000000000001)",
        "y: bin edges differ",
    ]
    assert compare_histograms(a, b, rtol=1e-9)[2:] == ["y: bin edges differ"]
    assert json.dumps(compare_histograms(a, a)) == "[]"
