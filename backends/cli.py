"""``agc profiles``: list, check and preview site profiles without submitting anything.

- ``agc profiles list``: the shipped profiles with their backend and description;
- ``agc profiles check FILE_OR_NAME...``: validate against the schema (exit 2 on error);
- ``agc profiles script FILE_OR_NAME [--workers N]``: the job script / HTCondor submit
  description / DIRAC JDLs the backend would submit;
- ``agc profiles schema``: the JSON Schema of a profile.
"""

from __future__ import annotations

import argparse
import json

from backends.profiles import PROFILE_SCHEMA, load_profile, shipped_profiles


def cmd_list(args: argparse.Namespace) -> int:
    for name, path in shipped_profiles().items():
        p = load_profile(path)
        print(f"{name:24s} {p.backend:9s} {p.description}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    for ref in args.profiles:
        p = load_profile(ref)  # a ProfileError is printed by the CLI, exit status 2
        print(f"OK: {p.source} (backend {p.backend}, {p.workers} worker job(s))")
    return 0


def cmd_script(args: argparse.Namespace) -> int:
    from backends.base import get_backend

    p = load_profile(args.profile)
    options = {"profile": args.profile}
    if args.workers:
        options["workers"] = args.workers
    backend = get_backend(p.backend)(**options)
    if hasattr(backend, "jdls"):
        print("\n".join(backend.jdls()))
    elif hasattr(backend, "job_script"):
        print(backend.job_script())
    else:
        print(f"backend {p.backend} submits no job scripts")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(PROFILE_SCHEMA, indent=1))
    return 0


def register(subparsers) -> None:
    """Add ``agc profiles ...`` to the ``agc`` command."""
    p = subparsers.add_parser("profiles", help="list, check and preview backend site profiles")
    sub = p.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)
    q = sub.add_parser("list", help="the shipped profiles (backends/profiles/*.yaml)")
    q.set_defaults(func=cmd_list)
    q = sub.add_parser("check", help="validate profiles against the schema")
    q.add_argument(
        "profiles",
        nargs="+",
        metavar="FILE_OR_NAME",
        help="site profile files (YAML) or names of shipped profiles ('agc profiles list')",
    )
    q.set_defaults(func=cmd_check)
    q = sub.add_parser(
        "script", help="print the job script / submit file / JDL(s), submitting nothing"
    )
    q.add_argument(
        "profile",
        metavar="FILE_OR_NAME",
        help="a site profile file (YAML) or the name of a shipped profile",
    )
    q.add_argument("--workers", type=int, default=None, help="number of jobs")
    q.set_defaults(func=cmd_script)
    q = sub.add_parser("schema", help="print the profile JSON Schema")
    q.set_defaults(func=cmd_schema)
