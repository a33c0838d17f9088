"""STAND-IN ``dirac-wms-job-submit`` / ``-kill`` / ``-status``: DIRAC jobs as local processes.

``dirac-wms-job-submit FILE.jdl`` reads the JDL (ClassAd syntax), starts ``Executable`` with
``Arguments`` (split like a shell would) in a fresh job directory, the way DIRAC's JobWrapper
runs a payload, with ``StdOutput`` / ``StdError`` there, and prints ``JobID = N``. The files
(and directories) of its ``InputSandbox`` are copied into the job directory first, under their
own names, as DIRAC's client uploads them at submission and its JobWrapper unpacks them there;
a listed file that does not exist refuses the submission (``ERROR FILE.jdl: Input Sandbox is
not valid: ... not found``, exit status 2, no job), as DIRAC's client does. Entries DIRAC would
fetch from grid storage or its sandbox store (``LFN:``, ``SB:``) are refused too. The JDL is
kept beside the job (``jobs/N.jdl``) with the ``Site`` it asked for, which ``status`` reports
as the site the job runs at. Requirements (CPU, RAM, tags, platform) are not enforced.

``dirac-wms-job-status ID...`` prints DIRAC's line for each job submitted to the stand-in's
state directory (``JobID=N Status=Running; MinorStatus=Application; ApplicationStatus=Unknown;
Site=S;``): Running while its process lives, Done once it exited (whatever its exit code: the
stand-in does not see it), Killed after ``dirac-wms-job-kill``; ids it never submitted are not
listed, as DIRAC leaves out jobs it does not know. No job is ever Waiting, Matched or Stalled.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

from backends.standins import localjobs

SYSTEM = "dirac"

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)'
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.]*)|(?P<punct>[\[\]{};=,]))",
    re.S,
)


def parse_jdl(text: str) -> dict:
    """A JDL ``[ Key = value; ... ]`` as a dict (strings, numbers, lists of them)."""
    tokens = []
    pos = 0
    text = re.sub(r"(?m)^\s*(#|//).*$", "", text).strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse JDL at: {text[pos : pos + 40]!r}")
        pos = m.end()
        if m.group("str") is not None:
            tokens.append(("v", json.loads(m.group("str"))))
        elif m.group("num") is not None:
            tokens.append(
                ("v", float(m.group("num")) if "." in m.group("num") else int(m.group("num")))
            )
        elif m.group("word") is not None:
            tokens.append(("w", m.group("word")))
        else:
            tokens.append(("p", m.group("punct")))
        while pos < len(text) and text[pos].isspace():
            pos += 1
    if tokens and tokens[0] == ("p", "["):
        tokens = tokens[1:-1] if tokens[-1] == ("p", "]") else tokens[1:]
    out, i = {}, 0
    while i < len(tokens):
        key, eq = tokens[i], tokens[i + 1]
        if key[0] != "w" or eq != ("p", "="):
            raise ValueError(f"expected 'Key = value' in JDL, got {key[1]!r} {eq[1]!r}")
        i += 2
        if tokens[i] == ("p", "{"):
            values, i = [], i + 1
            while tokens[i] != ("p", "}"):
                if tokens[i] != ("p", ","):
                    values.append(tokens[i][1])
                i += 1
            value = values
        else:
            value = tokens[i][1]
        out[key[1]] = value
        i += 1
        if i < len(tokens) and tokens[i] == ("p", ";"):
            i += 1
    return out


def input_sandbox(jdl: dict) -> list[Path]:
    """The local files and directories of the JDL's ``InputSandbox`` (relative paths from the
    submitting command's working directory, as DIRAC's client reads them); ValueError naming
    those missing or that the stand-in cannot fetch."""
    entries = jdl.get("InputSandbox", [])
    entries = [entries] if isinstance(entries, str) else [str(e) for e in entries]
    remote = [e for e in entries if e.startswith(("LFN:", "lfn:", "SB:"))]
    if remote:
        raise ValueError(
            f"the stand-in cannot fetch InputSandbox entries from grid storage or a sandbox "
            f"store: {', '.join(remote)}"
        )
    missing = [e for e in entries if not Path(e).exists()]
    if missing:
        raise ValueError(f"Input Sandbox is not valid: {', '.join(missing)} not found")
    return [Path(e) for e in entries]


def submit(argv: list[str]) -> int:
    files = [a for a in argv if not a.startswith("-")]
    if len(files) != 1:
        print("usage: dirac-wms-job-submit JDL (stand-in)", file=sys.stderr)
        return 1
    jdl_text = Path(files[0]).read_text()
    jdl = parse_jdl(jdl_text)
    try:
        sandbox = input_sandbox(jdl)
    except ValueError as err:  # as DIRAC's dirac-wms-job-submit says it
        print(f"ERROR {files[0]}: {err}")
        return 2
    state = localjobs.state_dir(SYSTEM)
    job_id = str(localjobs.next_id(state))
    workdir = state / "jobs" / job_id
    workdir.mkdir(parents=True)
    shutil.copy(files[0], state / "jobs" / f"{job_id}.jdl")
    for path in sandbox:  # where DIRAC's JobWrapper unpacks the sandbox: the job's directory
        if path.is_dir():
            shutil.copytree(path, workdir / path.name)
        else:
            shutil.copy(path, workdir / path.name)
    argv_job = [jdl["Executable"], *shlex.split(str(jdl.get("Arguments", "")))]
    site = jdl.get("Site", "ANY")
    site = site[0] if isinstance(site, list) and len(site) == 1 else site
    pid = localjobs.spawn(
        argv_job,
        workdir / jdl.get("StdOutput", "std.out"),
        workdir / jdl.get("StdError", "std.err"),
        cwd=workdir,
    )
    localjobs.record(state, job_id, pid=pid, site=site, name=jdl.get("JobName", ""))
    print(f"JobID = {job_id}")
    return 0


def kill(argv: list[str]) -> int:
    state = localjobs.state_dir(SYSTEM)
    status = 0
    for job_id in (a for a in argv if not a.startswith("-")):
        if localjobs.remove(state, job_id):
            print(f"Killed job {job_id}")
        else:
            print(f"ERROR: job {job_id} not found or already finished", file=sys.stderr)
            status = 1
    return status


def status(argv: list[str]) -> int:
    state = localjobs.state_dir(SYSTEM)
    live = {r["id"]: r for r in localjobs.records(state)}
    submitted = {r["id"]: r for r in localjobs.history(state)}
    ids = [i for a in argv if not a.startswith("-") for i in a.split(",") if i.strip()]
    for job_id in (i.strip() for i in ids):
        if not job_id.isdigit():
            print(f"ERROR: {job_id!r} is not a valid job ID (stand-in)")
            return 2
        r = submitted.get(job_id)
        if r is None:  # DIRAC does not know it: no line
            continue
        site = r["site"] if isinstance(r.get("site"), str) else "ANY"
        if job_id not in live:
            st, minor = "Killed", "Marked for termination"
        elif localjobs.alive(int(live[job_id]["pid"])):
            st, minor = "Running", "Application"
        else:
            st, minor = "Done", "Execution Complete"
        # as DIRAC's script prints it: "Key=value; " per field, then a newline
        fields = {"Status": st, "MinorStatus": minor, "ApplicationStatus": "Unknown", "Site": site}
        print(f"JobID={job_id} " + "".join(f"{k}={v}; " for k, v in fields.items()))
    return 0
