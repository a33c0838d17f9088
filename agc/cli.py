"""The ``agc`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from agc.config import RUN_SCHEMA, ConfigError

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


def cmd_run(args: argparse.Namespace) -> int:
    from agc import synth
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
    print(summary_table(result))
    print(
        f"\n{result.events:,} events in {result.chunks} chunks on {result.workers} worker(s): "
        f"{result.wall_seconds:.1f} s, {result.events_per_second:,.0f} events/s "
        f"({result.events_per_second / result.workers:,.0f} per worker), "
        f"{result.bytes_read / 1e6:,.1f} MB read"
    )
    if result.record.partial:
        print(partial_warning(result.summary), file=sys.stderr)
    fit = result.summary.get("fit")
    if result.record.cache_hits:
        print(
            f"{result.record.cache_hits} of {result.chunks} chunks came from the cache {args.cache}"
        )
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
    if result.run_dir is not None:
        print(
            f"Outputs: {result.run_dir}/ (histograms.root/.json, summary.json, metrics/"
            + (", histograms_ml.root/.json" if result.ml_histograms else "")
            + (", workspace.json, fit_result.json, plots" if fit and "bestfit" in fit else "")
            + (
                ", workspace_ml.json, ML plots"
                if "channels" in ((fit or {}).get("ml") or {})
                else ""
            )
            + ")"
        )
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from agc import inference, plots

    result = inference.fit_run(args.path, output_dir=args.output)
    print(
        f"{result.poi} = {result.bestfit:.3f} ± {result.uncertainty:.3f}"
        + (f" (minimiser strategy {result.strategy})" if result.strategy else "")
    )
    if not args.no_plots:
        out = (
            Path(args.output) if args.output else inference.load_fit_input(args.path).source.parent
        )
        if args.output:
            histograms = inference.load_fit_input(args.path).histograms
            plots.make_plots(
                histograms,
                out,
                result,
                (result.model, result.data),
                label=args.label,
                experiment=args.experiment,
            )
        else:
            plots.plot_run(out, label=args.label, experiment=args.experiment)
        print(f"Plots and fit_result.json in {out}/")
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


def cmd_validate(args: argparse.Namespace) -> int:
    from agc.histograms import read_histograms, validate

    path = Path(args.output)
    if path.is_dir():
        path = path / "histograms.root"
    output = read_histograms(path)
    try:
        reference = json.loads(Path(args.reference).read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: --reference {args.reference}: cannot read the JSON ({err})", file=sys.stderr)
        return 2
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agc", description="AGC CMS ttbar analysis benchmarking harness"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the analysis (default: synthetic data, local backend)")
    _add_run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("generate", help="write synthetic NanoAOD files and their catalog")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument(
        "--events",
        type=_positive_int,
        default=None,
        help="events per sample (default: the default dataset)",
    )
    p.add_argument("--files", type=_positive_int, default=1, help="files per sample")
    p.add_argument("--layout", choices=("realistic", "minimal"), default="realistic")
    p.add_argument("--compression", default="ZLIB:1", help="e.g. ZLIB:1, LZ4:4, ZSTD:5, none")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=_positive_int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("validate", help="compare histograms with a reference JSON (spec §7.2)")
    p.add_argument("output", help="histograms.root (or a run directory)")
    p.add_argument(
        "--reference", required=True, help="reference JSON, e.g. histos_1_file_per_process.json"
    )
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("fit", help="cabinetry/pyhf fit of a run or of a histogram file")
    p.add_argument("path", help="run directory, histograms.root, or a reference-style JSON")
    p.add_argument("--output", metavar="DIR", help="where to write (default: beside the input)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--label", default="Open Data", help="plot label, e.g. 'Simulation (synthetic)'")
    p.add_argument("--experiment", default="CMS", help="experiment name in the plot label")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("backends", help="list the available backends")
    p.set_defaults(func=cmd_backends)

    for module in COMMAND_MODULES:
        __import__(module, fromlist=["register"]).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["run"]  # the main job: `agc` alone runs the default analysis
    args = parser.parse_args(argv)
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
    from agc.errors import UserError

    try:
        return args.func(args)
    except ConfigError as err:  # a run option: named as the flag it came from
        print(f"error: {flag(err.key)} {err.value!r}: {err.problem}", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no outputs were written for this run", file=sys.stderr)
        return 130
