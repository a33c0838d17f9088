"""The device check: the analysis of one large chunk on the CPU path and on the device path.

``python -m benchmarks.gpu_check --out DIR [--events 1000000] [--device cuda|cpu] [--repeats 3]``
is one command for a bare GPU machine (the wheels carried in, nothing else):

1. it generates ``--events`` synthetic ttbar (nominal) events, minimal layout, into one file
   under ``DIR/data`` (a subprocess of the generator, every core; kept for a rerun);
2. it reads that file once with uproot, as one chunk (timed: read);
3. per repeat, it runs :func:`agc.analysis.process_events` on the chunk on the CPU path
   (``device=None``: one core, this process's own) and on the device path (``--device``):
   the transfer to the device (:func:`agc.analysis.to_device`, cuda only) and the analysis
   (selection, systematics, the fill, the one device-to-host copy) timed apart, cupy
   synchronised before each clock stops;
4. it compares the two paths' histograms bin for bin (values and variances, flow bins
   included): each one is ``exact``, ``within 1e-12`` (relative) or has ``migrations`` (the
   bins that differ, and by how much);
5. it writes ``DIR/gpu-check.json`` (machine, versions, commit, every timing, the comparison)
   and ``DIR/README.md``, whose every sentence is derived from that JSON.

Exit status: 0 when every histogram is exact or within 1e-12, 1 when one differs more
(migrations, or a histogram only one path gave), 2 on a usage error or when ``--device cuda``
finds no usable CUDA device (the message names what is missing), 3 when the device path
raised (the JSON and the page still written, with its error and traceback).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agc.histograms import relative_difference

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "ttbar__nominal"
PROCESS, VARIATION = SAMPLE.split("__")
LAYOUT = "minimal"
SEED = 42
#: Relative tolerance of the "within" class (a different order of the same additions).
RTOL = 1e-12
CLASSES = ("exact", f"within {RTOL:g}", "migrations", "missing")
EXACT, WITHIN, MIGRATIONS, MISSING = CLASSES
#: Events of the untimed-in-the-repeats first call of each path (its time is recorded apart).
WARMUP_EVENTS = 1000
#: The exit status when the device path raised (recorded in the JSON, with its traceback).
DEVICE_FAILED = 3

#: The generation, in a subprocess of its own: ``agc generate`` gives every one of the nine
#: samples the same events, so the one sample this check needs is asked of the generator
#: itself (``agc.synth.generate(events=...)``), one file of all the events.
_GENERATE = """
import json, sys
from agc import synth
spec = json.loads(sys.argv[1])
synth.generate(spec["output"], events={spec["sample"]: (1, spec["events"])},
               layout=spec["layout"], seed=spec["seed"])
"""


# ---------------------------------------------------------------- data


def generate_data(out: Path, events: int, seed: int = SEED) -> Path:
    """The file of ``events`` synthetic events of :data:`SAMPLE` under ``out/data``: made by
    a subprocess of the generator, or the one a previous check left (same events and seed)."""
    directory = out / "data" / f"{SAMPLE}-{LAYOUT}-{events}-seed{seed}"
    catalog = directory / "catalog.json"  # written last by the generator
    if not catalog.exists():
        spec = {
            "output": str(directory),
            "sample": SAMPLE,
            "events": events,
            "layout": LAYOUT,
            "seed": seed,
        }
        done = subprocess.run(
            [sys.executable, "-c", _GENERATE, json.dumps(spec)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"generating the data failed:\n{done.stderr[-3000:]}")
    entry = json.loads(catalog.read_text())[PROCESS][VARIATION]["files"][0]
    return directory / entry["path"]


def read_events(path: Path):
    """The analysis branches of every event of ``path``, read and deserialised in memory."""
    import awkward as ak
    import uproot

    from agc.vocabulary import ANALYSIS_BRANCHES

    with uproot.open(path) as f:
        events = f["Events"].arrays(list(ANALYSIS_BRANCHES))
    ak.materialize(events)
    return events


# ---------------------------------------------------------------- timing


def _synchronize(device: str | None) -> None:
    if device == "cuda":
        import cupy  # noqa: PLC0415 - only on GPU machines

        cupy.cuda.Device().synchronize()


def time_path(events, device: str | None, weight: float) -> tuple[dict, dict]:
    """One repeat of one path: its timings (seconds) and its histograms.

    ``transfer_seconds``: :func:`agc.analysis.to_device` (None unless cuda);
    ``analysis_seconds``: :func:`agc.analysis.process_events` with the fill and the copy to
    the host; ``cpu_seconds``: this process's CPU time over both.
    """
    from agc.analysis import process_events, to_device

    _synchronize(device)
    cpu0 = time.process_time()
    transfer = None
    if device == "cuda":
        t0 = time.perf_counter()
        events = to_device(events, device)
        _synchronize(device)
        transfer = time.perf_counter() - t0
    t0 = time.perf_counter()
    histograms = process_events(
        events, process=PROCESS, variation=VARIATION, weight=weight, dataset=SAMPLE, device=device
    )
    _synchronize(device)
    analysis = time.perf_counter() - t0
    timing = {
        "transfer_seconds": transfer,
        "analysis_seconds": analysis,
        "cpu_seconds": time.process_time() - cpu0,
    }
    return timing, histograms


def summarize(repeats: Sequence[Mapping], events: int) -> dict | None:
    """Medians and bests over the repeats of one path; the analysis rate from the median
    (None without a repeat: the path failed at once)."""
    if not repeats:
        return None
    analysis = [r["analysis_seconds"] for r in repeats]
    transfer = [r["transfer_seconds"] for r in repeats if r["transfer_seconds"] is not None]
    median = statistics.median(analysis)
    out = {
        "analysis_seconds_median": median,
        "analysis_seconds_min": min(analysis),
        "analysis_events_per_second": events / median if median > 0 else None,
        "analysis_events_per_second_best": events / min(analysis) if min(analysis) > 0 else None,
        "transfer_seconds_median": statistics.median(transfer) if transfer else None,
        "cpu_seconds_per_wall_second": statistics.median(
            r["cpu_seconds"] / (r["analysis_seconds"] + (r["transfer_seconds"] or 0.0))
            for r in repeats
        ),
    }
    if len(analysis) > 1:
        out["analysis_seconds_first"] = analysis[0]
        out["analysis_seconds_median_after_first"] = statistics.median(analysis[1:])
    return out


# ---------------------------------------------------------------- comparison


def _flow_edges(h, index: int) -> list[float | None]:
    """[low, high] of flow bin ``index`` (0: underflow, n + 1: overflow); None: unbounded."""
    edges = [float(e) for e in h.axes[0].edges]
    low = edges[index - 1] if index >= 1 else None
    high = edges[index] if index < len(edges) else None
    return [low, high]


def compare_histograms(cpu: Mapping, device: Mapping, rtol: float = RTOL) -> dict:
    """Each histogram of the two paths, bin for bin (values and variances, flow included).

    Returns ``{"histograms": {name: {"class": ..., "bins": [...]}}, "counts": {class: n},
    "histograms_compared": n}``: ``exact`` when every bin is equal to the last bit,
    ``within 1e-12`` when every bin agrees to ``rtol`` (relative), else ``migrations``, listing
    each bin that differs more (flow index, edges, field, both sums, their difference);
    ``missing``: the histogram came from one path only.
    """
    out: dict[str, dict] = {}
    for name in sorted(set(cpu) | set(device)):
        if name not in cpu or name not in device:
            only = "cpu" if name in cpu else "device"
            out[name] = {"class": MISSING, "only_in": only, "bins": []}
            continue
        a, b = cpu[name], device[name]
        exact, within, bins, largest = True, True, [], 0.0
        for field in ("value", "variance"):
            x = np.asarray(a.view(flow=True)[field], dtype=np.float64)
            y = np.asarray(b.view(flow=True)[field], dtype=np.float64)
            if x.shape != y.shape:
                bins.append({"field": field, "shapes": [list(x.shape), list(y.shape)]})
                exact = within = False
                continue
            if not np.array_equal(x, y, equal_nan=True):
                exact = False
            rel = relative_difference(x, y)
            largest = max(largest, float(rel.max(initial=0.0)))
            for i in np.flatnonzero(rel > rtol):
                within = False
                bins.append(
                    {
                        "bin": int(i),
                        "edges": _flow_edges(a, int(i)),
                        "field": field,
                        "cpu": float(x[i]),
                        "device": float(y[i]),
                        "difference": float(y[i] - x[i]),
                        "relative": float(rel[i]) if np.isfinite(rel[i]) else None,
                    }
                )
        kind = EXACT if exact else WITHIN if within else MIGRATIONS
        entry: dict[str, Any] = {"class": kind, "bins": bins}
        if kind == WITHIN:
            entry["max_relative"] = largest
        out[name] = entry
    counts = {kind: sum(1 for h in out.values() if h["class"] == kind) for kind in CLASSES}
    return {"histograms": out, "counts": counts, "histograms_compared": len(out), "rtol": rtol}


def _worst(comparisons: Sequence[dict]) -> int:
    """The index of the comparison with the most histograms off exact (the first of ties)."""
    severity = [
        (c["counts"][MISSING], c["counts"][MIGRATIONS], c["counts"][WITHIN]) for c in comparisons
    ]
    return max(range(len(comparisons)), key=lambda i: (severity[i], -i))


def passed(comparison: Mapping) -> bool:
    """Every histogram exact or within the tolerance."""
    return comparison["counts"][MIGRATIONS] == 0 and comparison["counts"][MISSING] == 0


# ---------------------------------------------------------------- machine, versions, commit


def machine(device: str) -> dict:
    """Host, CPU and (with cuda) the GPU: cupy's device properties and nvidia-smi's answer."""
    from agc.metrics import machine_info

    info = machine_info()
    out: dict[str, Any] = {
        "hostname": info["hostname"],
        "cpu_model": info["cpu_model"],
        "cores": info["cpu_count"],
        "memory_gb": info["memory_gb"],
        "platform": info["platform"],
    }
    if device == "cuda":
        import cupy  # noqa: PLC0415 - checked before

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props.get("name", b"")
        out["gpu"] = {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "memory_bytes": int(props.get("totalGlobalMem", 0)),
            "compute_capability": f"{props.get('major')}.{props.get('minor')}",
            "devices_visible": int(cupy.cuda.runtime.getDeviceCount()),
            "cuda_runtime": _cuda_version(cupy.cuda.runtime.runtimeGetVersion()),
            "cuda_driver": _cuda_version(cupy.cuda.runtime.driverGetVersion()),
        }
    smi = shutil.which("nvidia-smi")
    out["nvidia_smi"] = None
    if smi:
        try:
            done = subprocess.run(
                [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            out["nvidia_smi"] = (done.stdout or done.stderr).strip() or None
        except (OSError, subprocess.SubprocessError) as err:
            out["nvidia_smi"] = f"failed: {err}"
    return out


def _cuda_version(number: int) -> str:
    """CUDA's version number (12040) as text (12.4)."""
    return f"{number // 1000}.{number % 1000 // 10}"


def versions() -> dict[str, str]:
    """Python and the packages the check runs on (cupy: "absent" when not importable)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("numpy", "awkward", "uproot", "hist"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    try:
        import cupy  # noqa: PLC0415 - only on GPU machines

        out["cupy"] = str(cupy.__version__)
    except ImportError:
        out["cupy"] = "absent"
    return out


def git_state() -> dict | str:
    """``{"commit", "dirty"}`` of the repository, or "unknown" (no git, or no repository)."""
    from agc.metrics import git_commit

    commit = git_commit()
    if commit == "unknown":
        return commit
    return {"commit": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty")}


# ---------------------------------------------------------------- the page


def _seconds(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _rate(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _edges(edges: Sequence[float | None]) -> str:
    low, high = edges
    if low is None:
        return f"underflow (< {high:g})"
    if high is None:
        return f"overflow (>= {low:g})"
    return f"[{low:g}, {high:g})"


def readme(result: Mapping) -> str:
    """The human-readable page of a check: every sentence from ``result`` (the JSON)."""
    device, m, v = result["device"], result["machine"], result["versions"]
    data = result["data"]
    lines = [f"# GPU check: device {device}", ""]
    lines.append(
        f"Machine: {m['hostname']}, {m['cpu_model']}, {m['cores']} logical cores, "
        f"{m['memory_gb']} GB memory."
    )
    if device == "cpu":
        lines.append(
            "Device cpu: the GPU code path on numpy, no GPU involved; it checks the device "
            "path's code, and measures nothing about GPUs."
        )
    else:
        gpu = m["gpu"]
        lines.append(
            f"Device cuda: {gpu['name']}, {gpu['memory_bytes'] / 2**30:.1f} GiB, compute "
            f"capability {gpu['compute_capability']}, CUDA runtime {gpu['cuda_runtime']}, "
            f"driver {gpu['cuda_driver']} ({gpu['devices_visible']} visible; the check uses "
            "the first)."
        )
    if m.get("nvidia_smi"):
        lines += ["", "nvidia-smi:", "", "```", m["nvidia_smi"], "```"]
    else:
        lines.append("nvidia-smi: not found on this machine.")
    lines += ["", "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + "."]
    git = result["git"]
    if isinstance(git, Mapping):
        tree = "with local changes" if git["dirty"] else "clean"
        lines.append(f"Commit: {git['commit']} (working tree {tree}).")
    else:
        lines.append("Commit: unknown (no git repository here).")
    lines += [
        "",
        "## Data",
        "",
        f"{data['events']:,} synthetic events of {data['sample']} ({data['layout']} layout, "
        f"seed {data['seed']}) in one file, analysed as one chunk; read once with uproot in "
        f"{data['read_seconds']:.3f} s ({_rate(data['read_events_per_second'])} events/s).",
        "",
        "## Timings",
        "",
        *_timing_lines(result),
        "",
        "## Histograms",
        "",
        *_histogram_lines(result),
    ]
    status = result["exit_status"]
    outcome = {
        0: "every histogram exact or within the tolerance",
        1: "histograms differ beyond the tolerance",
        DEVICE_FAILED: "the device path failed",
    }[status]
    lines += ["", f"Exit status {status}: {outcome}.", ""]
    return "\n".join(lines)


def _timing_lines(result: Mapping) -> list[str]:
    device, paths = result["device"], result["paths"]
    cpu, dev = paths["cpu_path"], paths["device_path"]
    warmup = result["warmup"]
    lines = [
        f"Per path, {result['repeats']} repeat(s), the two paths alternating. Analysis: "
        "process_events with the histogram fill (and, on the device path, its one copy to the "
        "host); the CPU path runs on one core, this process's own."
    ]
    sentence = (
        f"Before the repeats, each path ran once on the first {warmup['events']:,} events "
        f"(warm-up, left out of the repeats): CPU path "
        f"{warmup['cpu_path']['analysis_seconds']:.3f} s"
    )
    if "device_path" in warmup:
        w = warmup["device_path"]
        sentence += f", device path {w['analysis_seconds']:.3f} s"
        if w["transfer_seconds"] is not None:
            sentence += f" and {w['transfer_seconds']:.3f} s transfer"
    if device == "cuda":
        sentence += (
            " (a first call on a GPU also compiles cupy's kernels when their cache is empty)"
        )
    lines.append(sentence + ".")
    if device == "cuda":
        lines.append(
            "Transfer: the chunk's columns copied to the GPU (to_device), timed apart; cupy is "
            "synchronised before every clock stops."
        )
    else:
        lines.append("Transfer: none (device cpu: the columns stay in host memory).")
    lines += [
        "",
        "| path | transfer s (median) | analysis s (median) | analysis s (best) "
        "| analysis events/s | CPU s per wall s |",
        "|---|---|---|---|---|---|",
    ]
    for label, p in (("CPU path", cpu), (f"device path ({device})", dev)):
        s = p["summary"]
        if s is None:
            lines.append(f"| {label} | — | — | — | — | — |")
            continue
        lines.append(
            f"| {label} | {_seconds(s['transfer_seconds_median'])} "
            f"| {_seconds(s['analysis_seconds_median'])} | {_seconds(s['analysis_seconds_min'])} "
            f"| {_rate(s['analysis_events_per_second'])} "
            f"| {s['cpu_seconds_per_wall_second']:.2f} |"
        )
    ratio = result["ratio_device_to_cpu"]
    if ratio is not None:
        lines += [
            "",
            f"Device path / CPU path, analysis events/s (medians): {ratio:.2f}"
            + (" (both on this CPU)." if device == "cpu" else "."),
        ]
    after = (dev["summary"] or {}).get("analysis_seconds_median_after_first")
    if after is not None:
        sentence = (
            f"Repeat 1 of the device path took {dev['summary']['analysis_seconds_first']:.3f} s, "
            f"the later repeats a median of {after:.3f} s"
        )
        lines.append(sentence + ".")
    lines += ["", "Every repeat (seconds):", "", "| repeat | path | transfer | analysis | CPU |"]
    lines.append("|---|---|---|---|---|")
    for label, p in (("CPU path", cpu), (f"device path ({device})", dev)):
        for i, r in enumerate(p["repeats"], 1):
            lines.append(
                f"| {i} | {label} | {_seconds(r['transfer_seconds'])} "
                f"| {_seconds(r['analysis_seconds'])} | {_seconds(r['cpu_seconds'])} |"
            )
    return lines


def _histogram_lines(result: Mapping) -> list[str]:
    lines: list[str] = []
    error = result.get("device_error")
    if error is not None:
        where = f"repeat {error['repeat']}" if error["repeat"] else "the warm-up"
        lines += [
            f"The device path failed in {where}: {error['error']}",
            "",
            "```",
            error["traceback"].rstrip(),
            "```",
        ]
    comparison = result["comparison"]
    if comparison is None:
        lines.append("No histograms of the device path to compare.")
        return lines
    counts = comparison["counts"]
    per_repeat = comparison["per_repeat"]
    if len(per_repeat) == 1:
        which = "one repeat"
    elif all(c == per_repeat[0] for c in per_repeat):
        which = f"each of the {len(per_repeat)} repeats alike"
    else:
        which = f"repeat {comparison['repeat']} of {len(per_repeat)}, the one furthest from exact"
    lines.append(
        f"{comparison['histograms_compared']} histograms of the device path compared with the "
        "CPU path's (its first repeat), bin for bin, values and variances, flow bins included "
        f"({which}): "
        f"{counts[EXACT]} exact, {counts[WITHIN]} within {comparison['rtol']:g} (relative), "
        f"{counts[MIGRATIONS]} with migrations"
        + (f", {counts[MISSING]} from one path only." if counts[MISSING] else ".")
    )
    if which.startswith("repeat"):
        lines.append(
            "Per repeat (exact / within / migrations): "
            + "; ".join(
                f"{i}: {c[EXACT]} / {c[WITHIN]} / {c[MIGRATIONS]}"
                for i, c in enumerate(per_repeat, 1)
            )
            + "."
        )
    if not result["cpu_path_repeatable"]:
        lines.append("The CPU path's repeats did not all give the same histograms.")
    for name, h in comparison["histograms"].items():
        if h["class"] == WITHIN:
            lines.append(
                f"- {name}: within {comparison['rtol']:g} (largest {h['max_relative']:.2g})."
            )
        elif h["class"] == MISSING:
            lines.append(f"- {name}: given by the {h['only_in']} path only.")
        elif h["class"] == MIGRATIONS:
            lines.append(f"- {name}: migrations in {len(h['bins'])} bin(s):")
            for b in h["bins"]:
                if "bin" not in b:
                    lines.append(f"  - {b['field']}: shapes {b['shapes']}")
                    continue
                lines.append(
                    f"  - bin {b['bin']} {_edges(b['edges'])}, {b['field']}: CPU {b['cpu']!r}, "
                    f"device {b['device']!r} (difference {b['difference']:.6g})"
                )
    return lines


# ---------------------------------------------------------------- the check


def check(out: Path, events: int, device: str, repeats: int, seed: int = SEED) -> dict:
    """Generate, read, time both paths, compare; the result (the JSON's content)."""
    from agc.constants import sample_weight

    started = time.time()
    path = generate_data(out, events, seed)
    generated = time.time() - started
    t0 = time.perf_counter()
    chunk = read_events(path)
    read_seconds = time.perf_counter() - t0
    n = len(chunk)
    weight = sample_weight(PROCESS, n)
    timings: dict[str, list[dict]] = {"cpu_path": [], "device_path": []}
    cpu_results, device_results = [], []
    error = None
    # first calls (imports, caches; on a GPU cupy's kernel compilation) on a slice, apart
    head = chunk[: min(WARMUP_EVENTS, n)]
    warmup = {"events": len(head), "cpu_path": time_path(head, None, weight)[0]}
    try:
        warmup["device_path"] = time_path(head, device, weight)[0]
    except Exception as err:
        error = {
            "repeat": 0,
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }
    for _ in range(repeats):
        timing, histograms = time_path(chunk, None, weight)
        timings["cpu_path"].append(timing)
        cpu_results.append(histograms)
        if error is not None:
            continue
        try:
            timing, histograms = time_path(chunk, device, weight)
        except Exception as err:  # recorded, so that one run on a GPU machine tells all
            error = {
                "repeat": len(device_results) + 1,
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(),
            }
            continue
        timings["device_path"].append(timing)
        device_results.append(histograms)
    reference = cpu_results[0]
    cpu_repeatable = all(passed_exact(reference, h) for h in cpu_results[1:])
    comparison = None
    if device_results:
        comparisons = [compare_histograms(reference, h) for h in device_results]
        worst = _worst(comparisons)
        comparison = {
            **comparisons[worst],
            "repeat": worst + 1,
            "per_repeat": [c["counts"] for c in comparisons],
        }
    paths = {key: {"repeats": rows, "summary": summarize(rows, n)} for key, rows in timings.items()}
    cpu_rate = paths["cpu_path"]["summary"]["analysis_events_per_second"]
    dev_summary = paths["device_path"]["summary"]
    dev_rate = dev_summary["analysis_events_per_second"] if dev_summary else None
    if error is not None:
        status = DEVICE_FAILED
    else:
        status = 0 if comparison is not None and passed(comparison) and cpu_repeatable else 1
    result = {
        "check": "gpu-check",
        "device": device,
        "device_meaning": "a CUDA GPU through cupy"
        if device == "cuda"
        else "the GPU code path on numpy, no GPU involved",
        "events": n,
        "repeats": repeats,
        "machine": machine(device),
        "versions": versions(),
        "git": git_state(),
        "data": {
            "sample": SAMPLE,
            "layout": LAYOUT,
            "seed": seed,
            "events": n,
            "file": str(path),
            "file_bytes": path.stat().st_size,
            "generate_seconds": generated,
            "read_seconds": read_seconds,
            "read_events_per_second": n / read_seconds if read_seconds > 0 else None,
        },
        "warmup": warmup,
        "paths": paths,
        "ratio_device_to_cpu": dev_rate / cpu_rate if cpu_rate and dev_rate else None,
        "cpu_path_repeatable": cpu_repeatable,
        "comparison": comparison,
        "device_error": error,
        "exit_status": status,
        "wall_seconds": time.time() - started,
    }
    if device == "cuda":
        import cupy  # noqa: PLC0415 - checked before

        result["cupy_pool_bytes"] = int(cupy.get_default_memory_pool().total_bytes())
    return result


def passed_exact(a: Mapping, b: Mapping) -> bool:
    """The two sets of histograms are the same to the last bit."""
    return compare_histograms(a, b)["counts"][EXACT] == len(set(a) | set(b))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description="the analysis of one large chunk on the CPU path and on the device path: "
        "timings and a bin-for-bin comparison (gpu-check.json, README.md)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument(
        "--events", type=_positive, default=1_000_000, help="events of the chunk (1000000)"
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda: a GPU through cupy (default); cpu: the GPU code path on numpy",
    )
    p.add_argument("--repeats", type=_positive, default=3, help="repeats per path (3)")
    p.add_argument("--seed", type=int, default=SEED, help=f"generator seed ({SEED})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as stop:  # a usage error (2), or --help (0)
        return int(stop.code or 0)
    if args.device == "cuda":
        from agc.devices import DeviceUnavailable, check_cuda

        try:
            check_cuda()
        except DeviceUnavailable as err:
            print(f"gpu_check: --device cuda: {err}", file=sys.stderr)
            print("gpu_check: '--device cpu' runs the same GPU code path on numpy", file=sys.stderr)
            return 2
    from agc.fileio import atomic_write_text

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    result = check(out, args.events, args.device, args.repeats, args.seed)
    atomic_write_text(out / "gpu-check.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "README.md", readme(result))
    rates = {
        key: _rate((path["summary"] or {}).get("analysis_events_per_second"))
        for key, path in result["paths"].items()
    }
    line = (
        f"gpu_check: device {args.device}, {result['events']:,} events: analysis events/s "
        f"CPU path {rates['cpu_path']}, device path {rates['device_path']}; "
    )
    if result["comparison"] is not None:
        counts = result["comparison"]["counts"]
        line += (
            f"histograms {counts[EXACT]} exact, {counts[WITHIN]} within {RTOL:g}, "
            f"{counts[MIGRATIONS]} with migrations, {counts[MISSING]} from one path only; "
        )
    if result["device_error"] is not None:
        line += f"the device path failed ({result['device_error']['error']}); "
    print(line + f"{out / 'gpu-check.json'}")
    return int(result["exit_status"])


if __name__ == "__main__":
    sys.exit(main())
