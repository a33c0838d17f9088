"""STAND-IN ``condor_submit`` / ``condor_rm`` / ``condor_q``: HTCondor jobs as local processes.

Reads a submit description the way ``condor_submit`` does for the parts dask-jobqueue writes
(``key = value`` lines, ``+Attr`` = ``MY.Attr``, ``$(macro)`` and ``$F(macro)`` expansion,
``Executable`` + ``Arguments`` in HTCondor's "new" quoting, ``Output`` / ``Error``, a final
``Queue [N]``), starts each job as a detached process and prints
``N job(s) submitted to cluster C.``. The universe, container image and resource requests are
recorded but not enforced: every job runs on this machine, outside any container.

``condor_q [IDS...]`` reports the jobs submitted to the stand-in's state directory as job ads
with HTCondor's ``JobStatus`` numbers: 2 (Running) while the job's process lives, 4 (Completed)
once it exited, 3 (Removed) after ``condor_rm``; a real ``condor_q`` soon forgets ended jobs
(``condor_history`` has them), this stand-in keeps them. It prints them as ``-json`` (with
``-attributes A,B``), ``-af A B`` (``-autoformat``) or a table; no job is ever Idle or Held.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from backends.standins import localjobs

SYSTEM = "condor"


def condor_args(text: str) -> list[str]:
    """HTCondor "new" argument syntax (``"a 'b c' ''quoted''"``) -> argv."""
    s = text.strip()
    if s[:1] == s[-1:] == '"' and len(s) >= 2:
        s = s[1:-1]
    s = s.replace('""', '"')
    args: list[str] = []
    cur: list[str] = []
    i, in_quote, have = 0, False, False
    while i < len(s):
        c = s[i]
        if in_quote:
            if c == "'" and s[i + 1 : i + 2] == "'":
                cur.append("'")
                i += 2
                continue
            if c == "'":
                in_quote = False
            else:
                cur.append(c)
        elif c == "'":
            in_quote = have = True
        elif c.isspace():
            if cur or have:
                args.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(c)
        i += 1
    if cur or have:
        args.append("".join(cur))
    return args


def parse_submit(text: str) -> tuple[dict[str, str], int]:
    """``{lower-case key: raw value}`` and the ``Queue`` count of a submit description."""
    attrs: dict[str, str] = {}
    count = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"(?i)^queue\b", line):
            rest = line[5:].strip()
            count = int(rest) if rest.isdigit() else 1
            break
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"cannot parse submit line: {raw!r}")
        key = key.strip()
        if key.startswith("+"):
            key = "MY." + key[1:]
        attrs[key.lower()] = value.strip()
    if not count:
        raise ValueError("no Queue statement in the submit description")
    return attrs, count


def expand(value: str, attrs: dict[str, str], depth: int = 0) -> str:
    """Expand ``$(name)`` and ``$F(name)`` (quotes stripped) macros, recursively."""

    def lookup(match: re.Match) -> str:
        strip, name = match.group(1), match.group(2).lower()
        found = attrs.get(name, attrs.get("my." + name, ""))
        found = expand(found, attrs, depth + 1) if depth < 10 else found
        return found.strip().strip('"') if strip else found

    return re.sub(r"\$(F?)\(([^)]+)\)", lookup, value)


def submit(argv: list[str]) -> int:
    files = [a for a in argv if not a.startswith("-")]
    if len(files) != 1:
        print("usage: condor_submit SUBMIT_FILE (stand-in)", file=sys.stderr)
        return 1
    attrs, count = parse_submit(Path(files[0]).read_text())
    state = localjobs.state_dir(SYSTEM)
    cluster = localjobs.next_id(state)
    for proc in range(count):
        job = dict(attrs, clusterid=str(cluster), procid=str(proc))
        executable = expand(job["executable"], job)
        arguments = condor_args(expand(job.get("arguments", ""), job))
        job_id = f"{cluster}.{proc}"
        out = expand(job.get("output", ""), job) or str(state / "jobs" / f"{job_id}.out")
        err = expand(job.get("error", ""), job) or str(state / "jobs" / f"{job_id}.err")
        pid = localjobs.spawn([executable, *arguments], Path(out), Path(err))
        localjobs.record(
            state,
            job_id,
            pid=pid,
            universe=job.get("universe", "vanilla"),
            batch_name=expand(job.get("batch_name", ""), job),
        )
    print("Submitting job(s).")
    print(f"{count} job(s) submitted to cluster {cluster}.")
    return 0


def rm(argv: list[str]) -> int:
    state = localjobs.state_dir(SYSTEM)
    ids = [a for a in argv if not a.startswith("-")]
    live = [r["id"] for r in localjobs.records(state)]
    status = 0
    for wanted in ids:
        matches = [j for j in live if j == wanted or j.split(".")[0] == wanted]
        if not matches:
            print(f"Couldn't find/remove all jobs matching constraint ({wanted})", file=sys.stderr)
            status = 1
        for job_id in matches:
            localjobs.remove(state, job_id)
            print(f"Job {job_id} marked for removal")
    return status


#: ``JobStatus`` -> the letter of ``condor_q``'s ST column.
_STATUS_LETTER = {1: "I", 2: "R", 3: "X", 4: "C", 5: "H", 6: ">", 7: "S"}


def job_ads(state: Path) -> list[dict]:
    """An ad (``ClusterId``, ``ProcId``, ``JobStatus``...) for every job submitted to
    ``state``: Running while its process lives, Completed after it exited, Removed after
    ``condor_rm`` (which drops the job's record)."""
    live = {r["id"]: r for r in localjobs.records(state)}
    ads = []
    for r in localjobs.history(state):
        cluster, _, proc = r["id"].partition(".")
        if r["id"] not in live:
            status = 3
        elif localjobs.alive(int(live[r["id"]]["pid"])):
            status = 2
        else:
            status = 4
        ad = {
            "ClusterId": int(cluster),
            "ProcId": int(proc or 0),
            "JobStatus": status,
            "GlobalJobId": f"standin#{r['id']}",
            "StandinPid": int(r["pid"]),  # stand-in only: the job's local process
            "StandinUniverse": r.get("universe", "vanilla"),  # recorded, not enforced
        }
        if r.get("batch_name"):
            ad["JobBatchName"] = r["batch_name"]
        ads.append(ad)
    return ads


def _selected(ad: dict, wanted: list[str]) -> bool:
    job_id = f"{ad['ClusterId']}.{ad['ProcId']}"
    return not wanted or any(w in (job_id, str(ad["ClusterId"])) for w in wanted)


def q(argv: list[str]) -> int:
    """``condor_q [IDS...] [-json] [-attributes A,B] [-af A B ...]`` (``-name`` / ``-pool``
    and other options are accepted and ignored)."""
    wanted: list[str] = []
    attributes: list[str] | None = None
    autoformat: list[str] | None = None
    as_json = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-json":
            as_json = True
        elif arg in ("-attributes", "-attr"):
            i += 1
            attributes = [a for a in argv[i].split(",") if a] if i < len(argv) else []
        elif arg.split(":")[0] in ("-af", "-autoformat"):
            autoformat = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                i += 1
                autoformat.append(argv[i])
        elif arg in ("-name", "-pool", "-constraint"):
            i += 1  # its value
        elif not arg.startswith("-"):
            if not re.fullmatch(r"\d+(\.\d+)?", arg):
                print(f"condor_q: unknown job id or owner {arg!r} (stand-in)", file=sys.stderr)
                return 1
            wanted.append(arg)
        i += 1
    ads = [ad for ad in job_ads(localjobs.state_dir(SYSTEM)) if _selected(ad, wanted)]
    if as_json:
        if ads:  # condor_q -json prints nothing at all when no job matches
            keep = attributes
            shown = [{k: v for k, v in ad.items() if keep is None or k in keep} for ad in ads]
            print(json.dumps(shown, indent=2))
        return 0
    if autoformat is not None:
        for ad in ads:
            print(" ".join(str(ad.get(a, "undefined")) for a in autoformat))
        return 0
    print(f"{'ID':>8} {'PID':>8} {'ST':>3} UNIVERSE BATCH_NAME")
    for ad in ads:
        job_id = f"{ad['ClusterId']}.{ad['ProcId']}"
        st = _STATUS_LETTER[ad["JobStatus"]]
        universe, name = ad["StandinUniverse"], ad.get("JobBatchName", "")
        print(f"{job_id:>8} {ad['StandinPid']:>8} {st:>3} {universe} {name}")
    return 0
