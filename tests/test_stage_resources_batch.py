"""Per-stage Dask resources on the batch backends (slurm, htcondor, dirac).

A profile's ``stages`` says which Dask resources each stage of a chunk asks for; the workers a
batch job starts advertise theirs with ``dask worker --resources`` (GPU for a GPU job, else CPU
= the threads of a worker process). Checked here on the job scripts / submit descriptions /
JDLs the backends render (no batch system needed), on the profile checks, and on the executor
a backend starts (its scheduler in this process; the submit command a stand-in that submits
nothing).
"""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from backends.base import BackendError
from backends.dirac import DiracBackend
from backends.htcondor import HTCondorBackend
from backends.jobqueue import JobQueueExecutor
from backends.profiles import ProfileError, load_profile
from backends.slurm import SlurmBackend

SPLIT = {"read": {"CPU": 1}, "analysis": {"GPU": 1}}
CPU_ONLY = {"read": {"CPU": 1}, "analysis": {"CPU": 1}}
GPU_ONLY = {"read": {"GPU": 1}, "analysis": {"GPU": 1}}

BACKENDS = {"slurm": SlurmBackend, "htcondor": HTCondorBackend, "dirac": DiracBackend}


def _profile(backend: str = "slurm", stages=None, **worker) -> dict:
    data: dict = {"backend": backend, "worker": {"cores": 2, "memory": "1GB", **worker}}
    if backend == "htcondor":
        data["worker"].setdefault("disk", "1GB")
    if backend == "dirac":  # a grid worker dials an external address (no 127.0.0.1 warning)
        data["scheduler"] = {"contact_address": "tcp://scheduler.example.org:8786"}
    if stages is not None:
        data["stages"] = stages
    return data


def _write(data: dict, tmp_path, name: str = "site.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _resources_args(text: str) -> list[str]:
    """The values of every ``--resources`` in a rendered job."""
    return re.findall(r"--resources[ =](\S+?)['\"]?(?:\s|$)", text)


# --- SLURM job scripts ---------------------------------------------------------------------
def test_slurm_gpu_job_advertises_its_gpu():
    script = SlurmBackend(profile=_profile(gpus=1)).job_script()
    assert "--resources GPU=1" in script
    assert _resources_args(script) == ["GPU=1"]
    assert "#SBATCH --gpus=1" in script  # the batch system's GPU request stays


def test_slurm_gpus_are_divided_among_the_worker_processes():
    backend = SlurmBackend(profile=_profile(cores=4, gpus=4, processes=2, stages=GPU_ONLY))
    script = backend.job_script()
    assert "--nworkers 2" in script
    assert _resources_args(script) == ["GPU=2"]  # dask applies it to each worker process
    assert "#SBATCH --gpus=4" in script


@pytest.mark.parametrize(("cores", "processes", "threads"), [(2, 1, 2), (4, 2, 2), (3, 1, 3)])
def test_slurm_stages_profile_advertises_the_cpu_threads_of_each_worker(cores, processes, threads):
    profile = _profile(cores=cores, processes=processes, stages=CPU_ONLY)
    script = SlurmBackend(profile=profile).job_script()
    assert f"--resources CPU={threads}" in script
    assert _resources_args(script) == [f"CPU={threads}"]
    assert f"--nthreads {threads}" in script


def test_no_stages_and_no_gpus_advertise_nothing():
    assert "--resources" not in SlurmBackend(profile=_profile()).job_script()
    assert "--resources" not in SlurmBackend(profile="slurm-local").job_script()


def test_the_profiles_own_resources_win(tmp_path):
    own = ["--resources", "GPU=1,CPU=2"]
    backend = SlurmBackend(profile=_profile(gpus=1, extra_args=own, stages=SPLIT))
    script = backend.job_script()
    assert script.count("--resources") == 1
    assert _resources_args(script) == ["GPU=1,CPU=2"]
    assert backend.worker_resources() == {"GPU": 1.0, "CPU": 2.0}
    assert "#SBATCH --gpus=1" in script
    # the --resources=VALUE form counts as the profile's own too
    own_eq = SlurmBackend(profile=_profile(extra_args=["--resources=CPU=2"], stages=CPU_ONLY))
    assert _resources_args(own_eq.job_script()) == ["CPU=2"]


def test_gpus_not_divisible_among_processes_is_refused_with_stages(tmp_path):
    path = _write(_profile(cores=4, gpus=1, processes=2, stages=GPU_ONLY), tmp_path)
    with pytest.raises(BackendError, match=r"worker\.gpus 1 .*worker\.processes 2") as err:
        SlurmBackend(profile=path)
    assert path in str(err.value)


def test_malformed_own_resources_are_refused(tmp_path):
    path = _write(_profile(extra_args=["--resources", "GPU"], stages=CPU_ONLY), tmp_path)
    with pytest.raises(ProfileError, match=r"worker\.extra_args: --resources 'GPU' is not"):
        SlurmBackend(profile=path)


# --- HTCondor submit descriptions and DIRAC JDLs -------------------------------------------
def _htcondor_worker_argv(backend) -> tuple[list[str], dict]:
    htcondor2 = pytest.importorskip("htcondor2", reason="pip install htcondor")
    from backends.standins.condor import condor_args

    sub = htcondor2.Submit(backend.job_script())
    argv = condor_args(sub["Arguments"])
    assert argv[0] == "-c"
    return shlex.split(argv[1]), dict(sub.items())


def test_htcondor_gpu_job_advertises_its_gpus():
    argv, sub = _htcondor_worker_argv(HTCondorBackend(profile=_profile("htcondor", gpus=2)))
    assert argv[argv.index("--resources") + 1] == "GPU=2"
    assert sub["request_gpus"] == "2"


def test_htcondor_stages_job_advertises_its_cpu_threads():
    backend = HTCondorBackend(profile=_profile("htcondor", stages=CPU_ONLY))
    argv, sub = _htcondor_worker_argv(backend)
    assert argv[argv.index("--resources") + 1] == "CPU=2"
    assert "request_gpus" not in sub


def _jdl(backend):
    classad2 = pytest.importorskip("classad2", reason="pip install htcondor (ClassAd parser)")
    return classad2.parseOne(backend.job_script())


def test_dirac_gpu_job_advertises_its_gpu():
    ad = _jdl(DiracBackend(profile=_profile("dirac", gpus=1, stages=GPU_ONLY)))
    assert "--resources GPU=1 " in ad["Arguments"]
    assert list(ad["Tags"]) == ["GPU"]


def test_dirac_stages_job_advertises_its_cpu_threads():
    ad = _jdl(DiracBackend(profile=_profile("dirac", stages=CPU_ONLY)))
    assert "--resources CPU=2 " in ad["Arguments"]
    assert "Tags" not in ad


def test_shipped_dirac_gpu_profile_advertises_gpu_and_asks_no_stages():
    backend = DiracBackend(profile="dirac-gridpp-gpu")
    ad = _jdl(backend)
    assert "--resources GPU=1 " in ad["Arguments"]
    assert "apptainer exec --nv " in ad["Arguments"]
    assert backend.stage_resources() is None  # a GPU-only profile: see its comment


# --- the schema ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            {**SPLIT, "write": {"CPU": 1}},
            r"stages\.write: unknown key \(allowed here: analysis, read\)",
        ),
        ({"read": {"CPU": 0}, "analysis": {"GPU": 1}}, r"stages\.read\.CPU: 0 is not a positive"),
        ({"read": {"CPU": 1}, "analysis": {"GPU": -1}}, r"stages\.analysis\.GPU: -1 is not a"),
        ({"read": {"CPU": 1}}, r"stages\.analysis: required \(Dask resources of the analysis"),
        ({"read": {}, "analysis": {"GPU": 1}}, r"stages\.read: \{\} is not a mapping of Dask"),
        ({"read": {"CPU": "one"}, "analysis": {"GPU": 1}}, r"stages\.read\.CPU: 'one' is not"),
    ],
)
def test_schema_refuses_bad_stages_naming_file_and_key(tmp_path, stages, message):
    path = _write(_profile(stages=stages), tmp_path)
    with pytest.raises(ProfileError, match=message) as err:
        load_profile(path)
    assert path in str(err.value)


def test_schema_takes_fractional_amounts():
    stages = {"read": {"CPU": 0.5}, "analysis": {"CPU": 1}}
    assert load_profile(_profile(stages=stages)).data["stages"] == stages


# --- stages the workers cannot run --------------------------------------------------------
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_gpu_stage_without_gpu_workers_is_refused(tmp_path, backend):
    path = _write(_profile(backend, stages=SPLIT), tmp_path)
    with pytest.raises(ProfileError) as err:
        BACKENDS[backend](profile=path)
    message = str(err.value)
    assert path in message
    assert "stages.analysis" in message and "the analysis stage asks for" in message
    assert "Dask resource GPU: 1" in message
    assert "advertises CPU=2" in message  # what the workers do advertise
    assert "worker.gpus" in message  # how to get GPU workers


def test_cpu_stage_on_gpu_only_jobs_is_refused(tmp_path):
    path = _write(_profile(gpus=1, stages=SPLIT), tmp_path)
    with pytest.raises(
        ProfileError,
        match=r"stages\.read: the read stage asks for the Dask "
        r"resource CPU: 1, but no worker .* advertises CPU \(.*GPU=1\)",
    ):
        SlurmBackend(profile=path)


def test_stage_asking_more_than_a_worker_has_is_refused():
    with pytest.raises(ProfileError, match=r"stages\.read: .*CPU: 4, .*only CPU=2"):
        SlurmBackend(profile=_profile(stages={"read": {"CPU": 4}, "analysis": {"CPU": 1}}))


def test_own_resources_make_a_split_profile_runnable():
    extra = ["--resources", "GPU=1,CPU=4"]
    backend = DiracBackend(
        profile=_profile("dirac", cores=4, gpus=1, extra_args=extra, stages=SPLIT)
    )
    assert backend.stage_resources() == {"read": {"CPU": 1.0}, "analysis": {"GPU": 1.0}}
    assert "--resources GPU=1,CPU=4 " in _jdl(backend)["Arguments"]


# --- what the executor gets ----------------------------------------------------------------
def test_stage_resources_are_a_plain_dict_or_none():
    stages = SlurmBackend(profile=_profile(stages=CPU_ONLY)).stage_resources()
    assert stages == {"read": {"CPU": 1.0}, "analysis": {"CPU": 1.0}}
    assert type(stages) is dict and all(type(v) is dict for v in stages.values())
    assert SlurmBackend(profile=_profile()).stage_resources() is None


def test_started_executor_places_the_stages_and_the_job_advertises_cpu(tmp_path):
    """start() with a stand-in sbatch that only keeps the script: the executor (scheduler in
    this process, no worker) carries the profile's stages, and the submitted job its CPU."""
    submitted = tmp_path / "submitted.sh"
    sbatch = tmp_path / "sbatch"
    sbatch.write_text(
        f"#!/bin/sh\nfor a; do f=$a; done\ncp \"$f\" {submitted}\necho 'Submitted batch job 1'\n"
    )
    scancel = tmp_path / "scancel"
    scancel.write_text("#!/bin/sh\nexit 0\n")
    for script in (sbatch, scancel):
        script.chmod(0o755)
    profile = _profile(stages=CPU_ONLY)
    profile["slurm"] = {"submit_command": str(sbatch), "cancel_command": str(scancel)}
    executor = SlurmBackend(profile=profile, workers=1).start(tasks=1)
    try:
        assert isinstance(executor, JobQueueExecutor)
        assert executor.stage_resources == {"read": {"CPU": 1.0}, "analysis": {"CPU": 1.0}}
        assert executor.cores_per_worker == 2
    finally:
        executor.close()
    assert _resources_args(submitted.read_text()) == ["CPU=2"]
