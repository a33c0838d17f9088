"""The ``agc`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from agc.engines import ENGINES

log = logging.getLogger("agc")

SYNTHETIC = "synthetic"

#: Modules that add their own subcommands through ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = ("backends.cli", "agc.cache.cli", "agc.bench")


def default_data_dir() -> Path:
    """Where the default synthetic dataset lives: $AGC_DATA_DIR, else the user cache directory."""
    if os.environ.get("AGC_DATA_DIR"):
        return Path(os.environ["AGC_DATA_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "agc-harness"


def default_dataset_key() -> str:
    """Content key of the default dataset: the generator's source and the dataset definition.

    A changed generator gets a new directory instead of silently reusing stale files.
    """
    import hashlib

    from agc import synth

    digest = hashlib.sha256(json.dumps(synth.DEFAULT_DATASET, sort_keys=True).encode())
    for source in sorted(Path(synth.__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:12]


def ensure_default_dataset(progress: bool = True) -> Path:
    """The catalog of the default synthetic dataset, generating it the first time."""
    from agc import synth

    target = default_data_dir() / f"synthetic-default-{default_dataset_key()}"
    catalog = target / "catalog.json"
    if catalog.exists():
        return catalog
    print(f"Generating the default synthetic dataset in {target} (once) ...", file=sys.stderr)
    return synth.generate(target, progress=progress)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive integer")
    return value


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inputs")
    g.add_argument(
        "--catalog",
        default=SYNTHETIC,
        help="'synthetic' (default: generated once, then reused), 'agc' (the real AGC "
        "inputs), or a catalog.json path",
    )
    g.add_argument(
        "--n-files",
        type=int,
        default=-1,
        metavar="N",
        help="first N files per sample (-1 = all; default %(default)s)",
    )
    g.add_argument(
        "--samples",
        nargs="+",
        metavar="KEY",
        help="only these fileset keys, e.g. ttbar__nominal wjets__nominal",
    )
    g.add_argument("--eos", action="store_true", help="read the real inputs from CERN EOS")
    g.add_argument(
        "--xcache", metavar="PREFIX", help="read through an XCache, e.g. root://host:1094"
    )
    g.add_argument("--mirror", metavar="DIR", help="local directory mirroring /store/... paths")
    g = p.add_argument_group("analysis")
    g.add_argument("--no-systematics", action="store_true", help="nominal selection only")
    g.add_argument("--seed", type=int, default=None, help="seed of the pt_res_up smear")
    g = p.add_argument_group("execution")
    g.add_argument("--backend", default="local", help="backend name (see 'agc backends')")
    g.add_argument(
        "--profile",
        default=None,
        metavar="FILE_OR_NAME",
        help="site profile (YAML) for the backend; see backends/profiles/",
    )
    g.add_argument("--mode", default=None, help="local backend: inprocess, processes or dask")
    g.add_argument("--workers", type=_positive_int, default=None, help="workers (default: cores)")
    g.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        default="chunked",
        help="chunked (one read+analyse task per chunk, any backend) or dask-awkward "
        "(an uproot.dask collection and analysis tasks in one Dask graph; needs "
        "--mode dask or a batch backend)",
    )
    g.add_argument(
        "--chunksize",
        type=_positive_int,
        default=100_000,
        help="events per chunk (default %(default)s)",
    )
    g.add_argument(
        "--io-only",
        action="store_true",
        help="I/O-only mode: read the branches and do nothing else (the I/O ceiling)",
    )
    g.add_argument(
        "--io-branches",
        default="analysis",
        metavar="SET",
        help="with --io-only: 'analysis' (default) or a reference IO_FILE_PERCENT set "
        "(4.1, 15, 25)",
    )
    g = p.add_argument_group("caching")
    g.add_argument(
        "--cache",
        default=None,
        metavar="URL",
        help="step-level cache store (directory, root:// or s3:// URL)",
    )
    g.add_argument(
        "--data-lake",
        choices=("copy", "only", "off"),
        default="copy",
        help="keep run outputs in the cache store too (copy), only there (only; "
        "fetch with 'agc fetch RUN_ID'), or not (off)",
    )
    g = p.add_argument_group("outputs")
    g.add_argument(
        "--no-fit", action="store_true", help="skip the cabinetry/pyhf fit and the plots at the end"
    )
    g.add_argument("--output", metavar="DIR", help="run directory (default agc-output/<run-id>)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _config_from_args(args: argparse.Namespace):
    from agc.analysis import DEFAULT_SEED
    from agc.run import RunConfig

    catalog = args.catalog
    if catalog == SYNTHETIC:
        catalog = str(ensure_default_dataset(progress=not args.quiet))
    backend_options = {}
    if args.workers is not None:
        backend_options["workers"] = args.workers
    if args.mode is not None:
        backend_options["mode"] = args.mode
    if args.profile is not None:
        backend_options["profile"] = args.profile
    return RunConfig(
        catalog=catalog,
        n_files=args.n_files,
        samples=tuple(args.samples) if args.samples else None,
        systematics=not args.no_systematics,
        seed=DEFAULT_SEED if args.seed is None else args.seed,
        eos=args.eos,
        xcache=args.xcache,
        mirror=args.mirror,
        io_only=args.io_only,
        io_branches=args.io_branches,
        backend=args.backend,
        backend_options=backend_options,
        engine=args.engine,
        chunksize=args.chunksize,
        cache=args.cache,
        data_lake=args.data_lake,
        fit=not args.no_fit,
        output_dir=args.output,
    )


def summary_table(result) -> str:
    """The readable end-of-run table: events, weight, yields and raw counts per sample."""
    import pandas as pd

    rows = []
    for sample, n in result.events_per_sample.items():
        w = result.weights[sample]
        y = result.yields[sample]
        rows.append(
            {
                "sample": sample,
                "events": n,
                "weight": w,
                "4j1b yield": y["4j1b"],
                "4j1b raw": round(y["4j1b"] / w),
                "4j2b yield": y["4j2b"],
                "4j2b raw": round(y["4j2b"] / w),
            }
        )
    df = pd.DataFrame(rows).set_index("sample")
    return df.to_string(float_format=lambda v: f"{v:,.3f}" if abs(v) < 1e4 else f"{v:,.1f}")


def cmd_run(args: argparse.Namespace) -> int:
    from agc.run import run

    result = run(_config_from_args(args), progress=not args.quiet)
    print(summary_table(result))
    print(
        f"\n{result.events:,} events in {result.chunks} chunks on {result.workers} worker(s): "
        f"{result.wall_seconds:.1f} s, {result.events_per_second:,.0f} events/s "
        f"({result.events_per_second / result.workers:,.0f} per worker), "
        f"{result.bytes_read / 1e6:,.1f} MB read"
    )
    fit = result.summary.get("fit")
    if fit and "bestfit" in fit:
        print(
            f"Fit to pseudodata: {fit['poi']} = {fit['bestfit']:.3f} ± {fit['uncertainty']:.3f}"
            + (f" (minimiser strategy {fit['strategy']})" if fit.get("strategy") else "")
        )
    elif fit:
        print(f"No fit: {fit['error']}")
    if result.run_dir is not None:
        print(
            f"Outputs: {result.run_dir}/ (histograms.root/.json, summary.json, metrics/"
            + (", workspace.json, fit_result.json, plots" if fit and "bestfit" in fit else "")
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
    from backends.base import _load, available_backends

    for name, target in sorted(available_backends().items()):
        try:
            description = _load(target).description
        except Exception as err:  # a broken third-party backend must not hide the others
            description = f"(cannot load {target}: {err})"
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
    if not args.verbose:  # cabinetry warns once per empty template bin; keep the summary readable
        logging.getLogger("cabinetry").setLevel(logging.ERROR)
        # Dask logs every scheduler and worker event at INFO; read when dask is first imported
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if args.command is None:
        parser.print_help()
        return 2
    from agc.errors import UserError

    try:
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no outputs were written for this run", file=sys.stderr)
        return 130
