"""The dirac backend's JDLs read by DIRAC's own code, along the path a job takes through DIRAC:

- the JobManager service reads the JDL with its ClassAd reader (``ClassAdLight``) and validates
  it as a job description model (``jdlToBaseJobDescriptionModel``, ``JobDescriptionModel``);
- the JobDB loads it as a job manifest (``checkAndAddOwner``: ``JobManifest`` and DIRAC's other
  JDL reader, ``loadJDLAsCFG``, with the group limits on CPU time, priority and job type),
  reads the manifest's JDL back with ``ClassAd`` and derives the job's attributes from it
  (``createJDLWithInitialStatus``, which also gives the JDL the job is stored with);
- on the worker node the JobAgent passes the stored JDL's values to the JobWrapper, which runs
  ``Executable + " " + Arguments`` with a shell.

No DIRAC service is contacted: the configuration these steps look up (the sites, the group's
VO) is merged into DIRAC's local configuration, as a ``dirac.cfg`` would be. DIRAC does not
pip-install as is; ``nox -s dirac`` installs it (.ci/install-dirac.py) and runs this file.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from backends.dirac import DiracBackend
from backends.standins.dirac import parse_jdl

pytest.importorskip("DIRAC", reason="DIRAC not installed: run `nox -s dirac`")

# imported once DIRAC is known to be there
from DIRAC.ConfigurationSystem.Client.ConfigurationData import gConfigurationData  # noqa: E402
from DIRAC.ConfigurationSystem.Client.Helpers.Registry import getVOForGroup  # noqa: E402
from DIRAC.Core.Utilities.ClassAd.ClassAdLight import ClassAd  # noqa: E402
from DIRAC.Core.Utilities.JDL import jdlToBaseJobDescriptionModel  # noqa: E402
from DIRAC.WorkloadManagementSystem.Client.WMSClient import WMSClient  # noqa: E402
from DIRAC.WorkloadManagementSystem.DB.JobDBUtils import (  # noqa: E402
    checkAndAddOwner,
    createJDLWithInitialStatus,
)
from DIRAC.WorkloadManagementSystem.Utilities.JobModel import JobDescriptionModel  # noqa: E402
from diraccfg import CFG  # noqa: E402

IC, RAL = "LCG.UKI-LT2-IC-HEP.uk", "LCG.RAL-LCG2.uk"
SITES = [IC, RAL, "LCG.SITE-A.uk", "LCG.SITE-B.uk"]
OWNER, GROUP, VO = "agc-user", "gridpp_user", "gridpp"
IMAGE = "/cvmfs/unpacked.cern.ch/registry.example.org/agc/agc-harness:0.1.0"  # containers/


@pytest.fixture(scope="module", autouse=True)
def _local_configuration():
    """The sites the JDLs name and the group's VO, where DIRAC's configuration has them."""
    gConfigurationData.mergeWithLocal(
        CFG().loadFromDict(
            {
                "Registry": {"Groups": {GROUP: {"VO": VO}}},
                "Resources": {"Sites": {"LCG": {site: {} for site in SITES}}},
            }
        )
    )


def submit(jdl: str) -> tuple[Any, dict[str, Any], ClassAd]:
    """What DIRAC's JobManager and JobDB do with a JDL that ``GROUP`` submits (as job 1).

    Returns the validated job description, the job's attributes in the JobDB and the stored
    JDL as the JobAgent reads it.
    """
    assert ClassAd(jdl).isOK()
    result = jdlToBaseJobDescriptionModel(ClassAd(jdl))
    assert result["OK"], result["Message"]
    description = result["Value"]
    JobDescriptionModel(
        **description.model_dump(exclude_none=True),
        owner=OWNER,
        ownerGroup=GROUP,
        vo=getVOForGroup(GROUP),
    )

    result = checkAndAddOwner(jdl, OWNER, GROUP)
    assert result["OK"], result["Message"]
    job = ClassAd(result["Value"].dumpAsJDL())
    assert job.isOK()
    job.insertAttributeInt("JobID", 1)
    # (the JobDB's checkAndPrepareJob, left out, maps Platform through the VO's
    # OSCompatibility table, which only the configuration of a DIRAC instance has)
    attributes: dict[str, Any] = {}
    stored = createJDLWithInitialStatus(
        job,
        ClassAd("[]"),
        ["JobName", "JobType", "JobGroup"],
        attributes,
        "Received",
        "Job accepted",
    )
    return description, attributes, ClassAd(stored)


def worker_command(ad: ClassAd) -> str:
    """The command line DIRAC's JobWrapper runs (with a shell) for the job ``ad``."""

    def value(name: str) -> str:  # as JobAgent._getJDLParameters hands it on
        return ad.get_expression(name).replace('"', "").replace("{", '"{').replace("}", '}"')

    return f"{value('Executable')} {value('Arguments')}"


def assert_dirac_reads_as_written(jdl: str) -> None:
    """DIRAC's ClassAd reader finds exactly the attributes and values the JDL has."""
    ad, written = ClassAd(jdl), parse_jdl(jdl)
    assert ad.isOK()
    assert set(ad.getAttributes()) == set(written)
    for name, value in written.items():
        if isinstance(value, list):
            assert ad.isAttributeList(name)
            assert ad.getListFromExpression(name) == [str(v) for v in value], name
        else:
            assert ad.getAttributeString(name) == str(value), name


def test_multi_site_jdls_through_dirac():
    jdls = DiracBackend(profile="dirac-gridpp").jdls()
    for jdl in jdls:
        assert_dirac_reads_as_written(jdl)
    ad = ClassAd(jdls[0])
    assert ad.getAttributeString("OwnerGroup") == GROUP
    assert ad.getAttributeInt("CPUTime") == 86400
    assert ad.getAttributeInt("MinRAM") == ad.getAttributeInt("MaxRAM") == 3815  # 4GB in MiB

    submitted = [submit(jdl) for jdl in jdls]
    # one site per job, and as many jobs per site as the profile asks for
    assert Counter(attributes["Site"] for _, attributes, _ in submitted) == {IC: 3, RAL: 4}
    for i, (description, attributes, stored) in enumerate(submitted):
        assert description.sites == {attributes["Site"]}
        assert stored.getListFromExpression("Site") == [attributes["Site"]]
        assert attributes["JobName"] == description.jobName == "agc-dask-worker"
        assert (
            attributes["JobGroup"]
            == description.jobGroup
            == ClassAd(jdls[0]).getAttributeString("JobGroup")
        )
        assert description.executable == "/bin/sh"
        assert description.cpuTime == 86400
        assert description.priority == 1
        assert description.jobType == "User"
        assert description.platform == ""  # no Platform in the profile: DIRAC's "any"
        assert "Platform" not in jdls[i]
        assert description.minNumberOfProcessors == description.maxNumberOfProcessors == 1
        assert description.outputSandbox == {"std.out", "std.err"}
        assert (description.stdout, description.stderr) == ("std.out", "std.err")
        assert "GPU" not in description.tags
        # every other attribute DIRAC found: nothing of Arguments spilled into attributes
        assert description.extraFields == {"MinRAM": 3815, "MaxRAM": 3815}

        executable, flag, script = shlex.split(worker_command(stored))
        assert (executable, flag) == ("/bin/sh", "-c")
        assert script.startswith(
            "touch DISABLE_WATCHDOG_CPU_WALLCLOCK_CHECK && "
            "export X509_CERT_DIR=/cvmfs/grid.cern.ch/etc/grid-security/certificates && "
            f"apptainer exec --bind /cvmfs {IMAGE} python3 -m distributed.cli.dask_worker "
            "tcp://agc-scheduler.example.ac.uk:8786 "
        )
        # the worker is named and tagged with its job's site (data locality)
        site = attributes["Site"]
        assert f"--name DiracCluster-{i}@{site} " in script
        assert script.endswith(
            f"--worker-port 40000:40100 --nanny-port 40000:40100 --resources site-{site}=1"
        )


def test_relayed_worker_jdl_through_dirac():
    """A profile with the relay broker (firewalled sites): DIRAC reads the worker's relay
    arguments as written, and the JDL stays unencoded."""
    from backends.profiles import load_profile

    data = dict(load_profile("dirac-gridpp").data)
    data["worker"] = {k: v for k, v in data["worker"].items() if k != "port_range"}
    data["relay"] = {"broker": "agc-scheduler.example.ac.uk:8790"}
    jdl = DiracBackend(profile=data).job_script(site=IC)
    assert_dirac_reads_as_written(jdl)
    _, _, stored = submit(jdl)
    script = shlex.split(worker_command(stored))[2]
    assert "base64" not in script
    assert " --host agc-scheduler.example.ac.uk:8790 " in script
    assert " --protocol relay:// " in f"{script} "
    assert "--worker-port" not in script


def test_gpu_stage_jdl_through_dirac():
    jdl = DiracBackend(profile="dirac-gridpp-gpu").job_script()
    assert_dirac_reads_as_written(jdl)
    description, attributes, stored = submit(jdl)
    assert stored.getListFromExpression("Tags") == ["GPU"]
    assert stored.getListFromExpression("Site") == [IC, RAL]
    assert attributes["Site"] == "Multiple"  # DIRAC picks one of them
    assert description.sites == {IC, RAL}
    assert description.minNumberOfProcessors == description.maxNumberOfProcessors == 4
    assert {"GPU", "MultiProcessor"} <= description.tags  # DIRAC adds MultiProcessor for 4
    assert description.extraFields == {"MinRAM": 15259, "MaxRAM": 15259}  # 16GB in MiB
    assert f"apptainer exec --nv --bind /cvmfs {IMAGE} python3 " in worker_command(stored)


def test_site_unknown_to_dirac_is_refused():
    jdl = DiracBackend(
        profile={
            "backend": "dirac",
            "worker": {"cores": 1, "memory": "1GB"},
            "dirac": {"sites": [IC, "LCG.NOWHERE.xx"]},
        }
    ).job_script()
    result = jdlToBaseJobDescriptionModel(ClassAd(jdl))
    assert not result["OK"]
    assert "Invalid sites: LCG.NOWHERE.xx" in result["Message"]


@pytest.mark.parametrize(
    "greeting, plain",
    [
        ("hello", True),
        ('"semi; colons, [brackets] {braces} \\\\ and a backslash"', False),
    ],
    ids=["plain", "characters-dirac-alters"],
)
def test_worker_command_runs_on_the_node_as_written(tmp_path, greeting, plain):
    """The setup lines and the worker command reach the node's shell intact: the worker's
    python is ``echo`` here, so the job prints the variable the setup sets and the worker's
    arguments."""
    setup = [f"export GREETING={greeting}", "env | grep ^GREETING="]
    jdl = DiracBackend(
        profile={
            "backend": "dirac",
            "worker": {"cores": 2, "memory": "2GB", "python": "echo", "setup": setup},
            "scheduler": {"contact_address": "tcp://scheduler.example.org:8786"},
            "dirac": {
                "owner_group": GROUP,
                "sites": ["LCG.SITE-A.uk", "LCG.SITE-B.uk"],
                "code": "installed",  # only the setup lines and the worker (echo) here
            },
        }
    ).job_script()
    assert_dirac_reads_as_written(jdl)
    _, _, stored = submit(jdl)
    command = worker_command(stored)
    assert (setup[0] in command) is plain  # readable in the JDL unless DIRAC would alter it

    run = subprocess.run(
        command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    )
    printed_greeting, worker_args = run.stdout.splitlines()
    assert printed_greeting == "GREETING=" + shlex.split(greeting)[0]
    assert worker_args.startswith(
        "-m distributed.cli.dask_worker tcp://scheduler.example.org:8786 "
        "--name worker-0 --nthreads 2 "
    )


def test_sandbox_jdl_through_dirac_and_the_node(tmp_path):
    """``dirac.code: sandbox``: DIRAC's client finds the harness wheel as the one local file of
    the InputSandbox (what dirac-wms-job-submit uploads), the job description has it, and the
    command DIRAC's JobWrapper runs in the job's directory, where it puts the wheel, unpacks it
    and starts the worker with the harness from there. The worker's python is a wrapper that
    prints where ``agc`` comes from instead of starting a worker."""
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = distributed.cli.dask_worker ]; then\n'
        f"  exec {sys.executable} -c 'import agc; print(agc.__file__)'\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    backend = DiracBackend(
        profile={
            "backend": "dirac",
            "worker": {"cores": 1, "memory": "1GB", "python": str(python)},
            "scheduler": {"contact_address": "tcp://scheduler.example.org:8786"},
            "dirac": {"owner_group": GROUP, "sites": ["LCG.SITE-A.uk"], "code": "sandbox"},
        }
    )
    jdl = backend.job_script()
    wheel = backend.harness_wheel()
    assert_dirac_reads_as_written(jdl)
    client = WMSClient.__new__(WMSClient)  # its reader of the InputSandbox, no service
    entries = client._WMSClient__getInputSandboxEntries(ClassAd(jdl))
    assert entries == [str(wheel)] and wheel.is_file()  # the file dirac-wms-job-submit uploads

    description, _, stored = submit(jdl)
    assert set(description.inputSandbox) == {str(wheel)}
    assert description.extraFields == {"MinRAM": 954, "MaxRAM": 954}  # InputSandbox is known
    assert stored.getListFromExpression("InputSandbox") == [str(wheel)]

    job = tmp_path / "job"
    job.mkdir()
    shutil.copy(wheel, job)  # the JobWrapper's download of the sandbox, by the file's name
    run = subprocess.run(
        worker_command(stored),
        shell=True,
        cwd=job,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(job / "agc-harness" / "agc" / "__init__.py")
