"""The ``agc`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from agc._version import __version__
from agc.config import RUN_SCHEMA, ConfigError
from agc.errors import UserError

if TYPE_CHECKING:
    import hist

log = logging.getLogger("agc")

#: Modules that add their own subcommands through ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = ("backends.cli", "agc.cache.cli", "agc.bench")

#: ``agc run`` flags whose name is not ``--`` + the run option's name.
FLAGS: dict[str, str] = {
    "output_dir": "--output",
    "systematics": "--no-systematics",
    "fit": "--no-fit",
}


def flag(key: str) -> str:
    """The ``agc run`` flag of a run option (``chunksize`` -> ``--chunksize``)."""
    return FLAGS.get(key, "--" + key.replace("_", "-"))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive integer")
    return value


def _option(
    group: argparse._ArgumentGroup, key: str, *, metavar: str | None = None, **kwargs
) -> None:
    """One ``agc run`` option with its help and choices from :data:`agc.config.RUN_SCHEMA`."""
    from agc.config import CHOICE_DESCRIPTIONS, RunConfig

    schema = RUN_SCHEMA["properties"][key]
    choices = [c for c in schema.get("enum", []) if c is not None]
    help_text = schema.get("description", "")
    if key in CHOICE_DESCRIPTIONS:
        help_text += ": " + "; ".join(f"{k}: {v}" for k, v in CHOICE_DESCRIPTIONS[key].items())
    default = RunConfig.__dataclass_fields__[key].default
    if default not in (None, False, "", -1) and not isinstance(default, bool):
        help_text += f" (default {default})"
    if schema.get("type") == "boolean":
        group.add_argument(flag(key), dest=key, action="store_true", help=help_text, **kwargs)
        return
    if choices:
        kwargs["choices"] = choices
    group.add_argument(flag(key), dest=key, metavar=metavar, help=help_text, **kwargs)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    from backends.base import available_backends

    g = p.add_argument_group("inputs")
    _option(g, "catalog", metavar="CATALOG")
    _option(g, "n_files", type=int, metavar="N")
    _option(g, "samples", nargs="+", metavar="KEY")
    _option(g, "eos")
    _option(g, "xcache", metavar="URL")
    _option(g, "mirror", metavar="DIR")
    _option(g, "read_retries", type=int, metavar="N")
    _option(g, "skip_bad_files")
    g = p.add_argument_group("analysis")
    g.add_argument("--no-systematics", action="store_true", help="nominal selection only")
    _option(g, "seed", type=int)
    _option(g, "ml", metavar="MODELS_DIR")
    g = p.add_argument_group("execution")
    g.add_argument(
        "--backend",
        choices=sorted(available_backends()),
        help=RUN_SCHEMA["properties"]["backend"]["description"],
    )
    _option(g, "profile", metavar="FILE_OR_NAME")
    _option(g, "scheduler_address", metavar="ADDRESS")
    _option(g, "mode")
    _option(g, "device")
    _option(g, "workers", type=int)
    _option(g, "engine")
    _option(g, "chunksize", type=int)
    _option(g, "io_only")
    _option(g, "io_branches", metavar="SET")
    g = p.add_argument_group("caching")
    _option(g, "cache", metavar="URL")
    _option(g, "data_lake")
    g = p.add_argument_group("outputs")
    g.add_argument(
        "--no-fit", action="store_true", help="skip the cabinetry/pyhf fit and the plots"
    )
    _option(g, "output_dir", metavar="DIR")
    _option(g, "label")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    """The :class:`agc.config.RunConfig` of ``agc run``'s arguments (the defaults are its own:
    an option left out is not passed)."""
    from agc.config import RunConfig

    given = {}
    for key in RUN_SCHEMA["properties"]:
        value = getattr(args, key, None)
        if value is not None and value is not False:
            given[key] = value
    if given.get("scheduler_address") and "backend" not in given:
        given["backend"] = "dask"  # --scheduler-address alone: join that cluster
    if given.get("device") and "backend" not in given:
        given["backend"] = "gpu"  # --device alone: the gpu backend on that device
    given["systematics"] = not args.no_systematics
    given["fit"] = not args.no_fit
    return RunConfig(**given)


def partial_warning(summary: dict) -> str:
    """The lines that say a run is partial: the chunks it left out, by file, and why."""
    skipped = summary.get("skipped_chunks", [])
    by_file: dict[str, list[dict]] = {}
    for chunk in skipped:
        by_file.setdefault(chunk["path"], []).append(chunk)
    lines = [
        f"PARTIAL RESULT: {len(skipped)} of {summary['chunks']} chunks in {len(by_file)} file(s) "
        f"could not be read and were skipped; {summary['events_lost']:,} events lost "
        "(each sample normalised to the events it processed):"
    ]
    for path, chunks in by_file.items():
        lost = sum(c["events_lost"] for c in chunks)
        lines.append(f"  {path} ({chunks[0]['sample']}, {lost:,} events): {chunks[0]['reason']}")
    return "\n".join(lines)


def summary_table(result) -> str:
    """The readable end-of-run table: events, weight, yields and raw counts per sample."""
    import pandas as pd

    rows = []
    for sample, n in result.events_per_sample.items():
        w = result.weights.get(sample)  # none for a sample that lost all its events
        y = result.yields[sample]
        rows.append(
            {
                "sample": sample,
                "events": n,
                "weight": w if w is not None else float("nan"),
                "4j1b yield": y["4j1b"],
                "4j1b raw": round(y["4j1b"] / w) if w else 0,
                "4j2b yield": y["4j2b"],
                "4j2b raw": round(y["4j2b"] / w) if w else 0,
            }
        )
    df = pd.DataFrame(rows).set_index("sample")
    return df.to_string(float_format=lambda v: f"{v:,.3f}" if abs(v) < 1e4 else f"{v:,.1f}")


def cache_lines(result, store: str) -> list[str]:
    """The end-of-run lines on events, time and rate, and on the chunks the cache served.

    A run whose every chunk came from the cache processed nothing: it gets its wall time and
    no events/s (the rate would be that of reading the cache, not of the analysis).
    """
    record = result.record
    head = (
        f"{result.events:,} events in {result.chunks} chunks on {result.workers} worker(s): "
        f"{result.wall_seconds:.1f} s"
    )
    all_cached = record.chunks > 0 and record.cache_hits == record.chunks
    if all_cached:
        lines = [
            head + ", no processing rate: every chunk was a cache hit, so events/s would "
            "measure the cache, not the analysis"
        ]
    else:
        lines = [
            head + f", {result.events_per_second:,.0f} events/s "
            f"({result.events_per_second / result.workers:,.0f} per worker), "
            f"{result.bytes_read / 1e6:,.1f} MB read"
        ]
    if record.cache_hits:
        line = f"{record.cache_hits} of {record.chunks} chunks from the cache ({store})"
        if not all_cached:
            line += "; the events/s count their events too"
        lines.append(line)
    return lines


def fetch_command(run_id: str, store: str) -> str:
    """The ``agc fetch`` command that copies a stored run back."""
    return f"agc fetch {shlex.quote(run_id)} --cache {shlex.quote(store)}"


def cmd_run(args: argparse.Namespace) -> int:
    from agc import synth
    from agc.cache.store import default_url
    from agc.config import SYNTHETIC_CATALOG
    from agc.runner import run

    config = config_from_args(args)
    if config.catalog == SYNTHETIC_CATALOG and not synth.default_dataset_dir().exists():
        print(
            f"Generating the default synthetic dataset in {synth.default_dataset_dir()} "
            "(once; later runs reuse it) ...",
            file=sys.stderr,
        )
    result = run(config, progress=not args.quiet)
    store = config.cache or default_url()
    print(summary_table(result))
    print()
    for line in cache_lines(result, store):
        print(line)
    if result.record.partial:
        print(partial_warning(result.summary), file=sys.stderr)
    fit = result.summary.get("fit")
    if fit and "bestfit" in fit:
        print(
            f"Fit to pseudodata: {fit['poi']} = {fit['bestfit']:.3f} ± {fit['uncertainty']:.3f}"
            + (f" (minimiser strategy {fit['strategy']})" if fit.get("strategy") else "")
        )
    elif fit:
        print(f"No fit: {fit['error']}")
    if result.ml_histograms:
        ml_fit = (fit or {}).get("ml") or {}
        print(
            f"ML step: {len(result.ml_histograms)} feature histograms "
            f"({result.summary['ml']['histograms_filled']} filled)"
            + (
                f"; ML workspace of {len(ml_fit['channels'])} features"
                if "channels" in ml_fit
                else ""
            )
            + (f"; no ML workspace: {ml_fit['error']}" if "error" in ml_fit else "")
        )
    files = (
        "histograms.root/.json, summary.json, metrics/"
        + (", histograms_ml.root/.json" if result.ml_histograms else "")
        + (", workspace.json, fit_result.json, plots" if fit and "bestfit" in fit else "")
        + (", workspace_ml.json, ML plots" if "channels" in ((fit or {}).get("ml") or {}) else "")
    )
    if result.run_dir is not None:
        print(f"Outputs: {result.run_dir}/ ({files})")
    if result.stored_run is not None:
        where = "only in" if result.run_dir is None else "also in"
        print(
            f"Run {result.run_id}: outputs ({files}) {where} the store {store}; "
            f"get them with: {fetch_command(result.run_id, store)}"
        )
    return 0


def synthetic_inputs(path: str | os.PathLike) -> bool | None:
    """Whether the histograms at ``path`` come from synthetic inputs (``agc generate``).

    A run directory (or a file in one) is told by its ``summary.json``: its catalog is the
    default synthetic dataset, the real AGC inputs, or a catalog whose files are all written
    by ``agc generate``. A file outside a run directory (such as the AGC's reference JSONs)
    holds histograms of the real inputs. ``None``: a run whose catalog cannot be read.
    """
    from agc.catalog import load_catalog
    from agc.config import REAL_CATALOG, SYNTHETIC_CATALOG

    path = Path(path)
    summary_path = (path if path.is_dir() else path.parent) / "summary.json"
    if not summary_path.is_file():
        return False
    try:
        summary = json.loads(summary_path.read_text())
        if isinstance(summary.get("synthetic"), bool):
            return summary["synthetic"]
        catalog = summary["config"]["catalog"]
        if catalog in (SYNTHETIC_CATALOG, REAL_CATALOG):
            return catalog == SYNTHETIC_CATALOG
        data, _ = load_catalog(catalog)
        names = [
            os.path.basename(f["path"])
            for process, variations in data.items()
            if process != "data"
            for entry in variations.values()
            for f in entry["files"]
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UserError) as err:
        log.warning("%s: cannot tell whether the run's inputs were synthetic (%s)", path, err)
        return None
    return bool(names) and all(name.startswith("synth_") for name in names)


def cmd_fit(args: argparse.Namespace) -> int:
    from agc import inference, plots

    out = Path(args.output) if args.output else Path.cwd()
    fit_input = inference.load_fit_input(args.path)
    try:
        result = inference.fit_run(fit_input, output_dir=out)
    except OSError as err:
        raise UserError(
            f"cannot write the fit's outputs into {out}/ ({err}); see --output"
        ) from err
    print(
        f"{result.poi} = {result.bestfit:.3f} ± {result.uncertainty:.3f}"
        + (f" (minimiser strategy {result.strategy})" if result.strategy else "")
    )
    if args.no_plots:
        print(f"workspace.json and fit_result.json in {out}/")
        return 0
    synthetic = synthetic_inputs(args.path)
    if synthetic is None and args.label is None:
        print(
            f"Cannot tell whether {args.path} holds synthetic inputs: the plots say "
            f"'{plots.OPEN_DATA_LABEL}' (--label sets another)",
            file=sys.stderr,
        )
    label, experiment = (
        (plots.SYNTHETIC_LABEL, "AGC") if synthetic else (plots.OPEN_DATA_LABEL, "CMS")
    )
    plots.make_plots(
        fit_input.histograms,
        out,
        result,
        label=args.label if args.label is not None else label,
        experiment=args.experiment if args.experiment is not None else experiment,
    )
    print(f"Plots, workspace.json and fit_result.json in {out}/")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from agc import synth

    events = None
    if args.events is not None:
        events = {s: (args.files, max(args.events // args.files, 1)) for s in synth.SAMPLES}
    catalog = synth.generate(
        Path(args.output),
        events=events,
        layout=args.layout,
        compression=args.compression,
        seed=args.seed,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(f"Catalog: {catalog}")
    return 0


def _histogram_file(path: Path) -> Path:
    return path / "histograms.root" if path.is_dir() else path


def compare_histograms(
    output: Mapping[str, hist.Hist], other: Mapping[str, hist.Hist], rtol: float = 0.0
) -> list[str]:
    """The differences between two sets of histograms: names, bin edges, contents and
    variances (flow bins included), bit for bit with ``rtol=0``, else up to ``rtol``."""
    import numpy as np

    errors = [f"{name}: only in the first" for name in sorted(set(output) - set(other))]
    errors += [f"{name}: only in the second" for name in sorted(set(other) - set(output))]
    for name in sorted(set(output) & set(other)):
        a, b = output[name], other[name]
        if not np.array_equal(a.axes[0].edges, b.axes[0].edges):
            errors.append(f"{name}: bin edges differ")
            continue
        for what in ("value", "variance"):
            x, y = (getattr(h.view(flow=True), what) for h in (a, b))
            bad = x != y if rtol == 0 else ~np.isclose(x, y, rtol=rtol, atol=0)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                errors.append(
                    f"{name}: {int(bad.sum())} bin(s) of {what}s differ (first: bin {i}, "
                    f"{float(x[i])!r} vs {float(y[i])!r})"
                )
    return errors


def _validate_against(args: argparse.Namespace, path: Path) -> int:
    from agc.histograms import read_histograms

    other = _histogram_file(Path(args.against))
    print(
        f"Comparing the histograms of {path} with those of {other} "
        + ("bit for bit" if args.rtol == 0 else f"within a relative tolerance of {args.rtol:g}")
    )
    errors = compare_histograms(read_histograms(path), read_histograms(other), args.rtol)
    for line in errors:
        print(f"ERROR: {line}")
    print(f"{'OK' if not errors else 'FAILED'}: {len(errors)} difference(s)")
    return 0 if not errors else 1


def cmd_validate(args: argparse.Namespace) -> int:
    from agc.histograms import read_histograms, validate
    from agc.inference import reference_weights

    path = _histogram_file(Path(args.output))
    if args.against is not None:
        return _validate_against(args, path)
    output = read_histograms(path)
    try:
        reference = json.loads(Path(args.reference).read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: --reference {args.reference}: cannot read the JSON ({err})", file=sys.stderr)
        return 2
    try:
        found = reference_weights(read_histograms(args.reference))
    except UserError:  # validate() names what is wrong with it
        found = None
    if found is not None:
        n = "all" if found[0] == -1 else str(found[0])
        what = (
            f"the AGC's reference histograms of the real CMS open-data inputs at {n} file(s) "
            "per process"
        )
    else:
        what = "the reference histograms"
    print(f"Comparing the histograms of {path} with {what} ({args.reference})")
    if synthetic_inputs(args.output):
        print(
            f"Note: {args.output} is a run of synthetic inputs: it is not expected to match a "
            "reference of the real inputs, and every histogram will differ. To check a run of "
            "synthetic inputs, compare it with another run: "
            f"agc validate {shlex.quote(str(args.output))} --against OTHER_RUN"
        )
    report = validate(output, reference)
    if args.verbose:
        for line in report.migrations:
            print(f"migration: {line}")
        for name in report.skipped_content:
            print(f"not compared (random content): {name}")
    for line in report.errors:
        print(f"ERROR: {line}")
    status = "OK" if report.ok else "FAILED"
    print(
        f"{status}: {report.checked} reference histograms checked, {len(report.errors)} "
        f"error(s), {len(report.migrations)} tolerated bin migration(s), "
        f"{len(report.skipped_content)} compared by edges only (pt_res_up)"
    )
    return 0 if report.ok else 1


def cmd_backends(args: argparse.Namespace) -> int:
    from backends.base import available_backends, get_backend

    for name in sorted(available_backends()):
        try:
            description = get_backend(name).description
        except Exception as err:  # a broken third-party backend must not hide the others
            description = f"({err})"
        print(f"{name:10s} {description}")
    return 0


#: What ``agc`` exits with when the program reading its output stops reading (``agc cache ls |
#: head``): 128 + SIGPIPE, the status of a command that the closed pipe ended, as the shell
#: reports it for ``seq 100000 | head -1``.
BROKEN_PIPE_EXIT = 141


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """``-v``/``--verbose`` after a subcommand too (``agc run -v``), added to the ``agc -v``
    count."""
    if "-v" in parser._option_string_actions or "--verbose" in parser._option_string_actions:
        return
    parser.add_argument(
        "-v",
        "--verbose",
        dest="sub_verbose",
        action="count",
        default=0,
        help="more logging (-vv: also cabinetry's warnings)",
    )


def subparsers_of(parser: argparse.ArgumentParser):
    """Every subcommand's parser under ``parser`` (``agc cache ls``'s too)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from subparsers_of(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agc", description="AGC CMS ttbar analysis benchmarking harness"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging (-vv: also cabinetry's warnings); also accepted after the command",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the analysis (default: synthetic data, local backend)")
    _add_run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("generate", help="write synthetic NanoAOD files and their catalog")
    p.add_argument(
        "--output", required=True, metavar="DIR", help="folder for the files and catalog.json"
    )
    p.add_argument(
        "--events",
        type=_positive_int,
        default=None,
        help="events per sample (default: the default dataset)",
    )
    p.add_argument("--files", type=_positive_int, default=1, help="files per sample")
    p.add_argument(
        "--layout",
        choices=("realistic", "minimal"),
        default="realistic",
        help="realistic: every branch of CMS NanoAOD, for realistic file sizes and read rates; "
        "minimal: only the branches the analysis reads (default realistic)",
    )
    p.add_argument("--compression", default="ZLIB:1", help="e.g. ZLIB:1, LZ4:4, ZSTD:5, none")
    p.add_argument(
        "--seed",
        type=int,
        default=42,
        help="random seed: the same seed gives the same events (default 42)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="processes writing files in parallel (default: one per core)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "validate",
        help="compare histograms with the AGC's reference histograms of the real CMS inputs, "
        "or with those of another run",
    )
    p.add_argument("output", help="histograms.root (or a run directory)")
    against = p.add_mutually_exclusive_group(required=True)
    against.add_argument(
        "--reference",
        metavar="JSON",
        help="reference JSON of the AGC, e.g. histos_1_file_per_process.json (histograms of "
        "the real CMS open-data inputs; runs of synthetic inputs do not match them)",
    )
    against.add_argument(
        "--against",
        metavar="OTHER_RUN",
        help="another run's directory or histograms.root: every histogram, bin and variance "
        "compared (e.g. two backends or engines on the same inputs)",
    )
    p.add_argument(
        "--rtol",
        type=float,
        default=0.0,
        help="with --against: relative tolerance per bin (default 0: bit for bit)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        dest="sub_verbose",
        action="count",
        default=0,
        help="also list the tolerated bin migrations and the histograms compared by edges only",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("fit", help="cabinetry/pyhf fit of a run or of a histogram file")
    p.add_argument("path", help="run directory, histograms.root, or a reference-style JSON")
    p.add_argument(
        "--output",
        metavar="DIR",
        help="where workspace.json, fit_result.json and the plots go (default: the current "
        "directory; never beside the input)",
    )
    p.add_argument("--no-plots", action="store_true", help="only the fit, no plots")
    p.add_argument(
        "--label",
        default=None,
        help="plot label after the experiment name (default: 'Simulation (synthetic)' for a "
        "run of synthetic inputs, else 'Open Data')",
    )
    p.add_argument(
        "--experiment",
        default=None,
        help="experiment name in the plot label (default: AGC for synthetic inputs, else CMS)",
    )
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("backends", help="list the available backends")
    p.set_defaults(func=cmd_backends)

    for module in COMMAND_MODULES:
        __import__(module, fromlist=["register"]).register(sub)
    for subparser in subparsers_of(parser):
        _add_verbose(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``agc`` command: parse ``argv`` (default ``sys.argv[1:]``), run the command, and
    return its exit status.

    A closed pipe (``agc cache ls | head -1``) ends the command quietly with
    :data:`BROKEN_PIPE_EXIT`: what was not printed is dropped, with no traceback.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["run"]  # the main job: `agc` alone runs the default analysis
    args = parser.parse_args(argv)
    args.verbose = getattr(args, "verbose", 0) + getattr(args, "sub_verbose", 0)
    logging.basicConfig(
        level=logging.WARNING - 10 * args.verbose, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.verbose:  # asked for: cabinetry's warnings too (one per empty template bin)
        logging.getLogger("cabinetry").setLevel(logging.WARNING - 10 * (args.verbose - 1))
    else:  # Dask logs every scheduler and worker event at INFO; read when dask is imported
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # Python's advice (the signal module's "Note on SIGPIPE"): send what is left to
        # devnull, so that the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_EXIT
    except ConfigError as err:  # a run option: named as the flag it came from
        print(f"error: {flag(err.key)} {err.value!r}: {err.problem}", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no outputs were written for this run", file=sys.stderr)
        return 130
