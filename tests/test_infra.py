"""The deployment files parse and say what matters: what runs, on what, with which rights."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"


def _yaml(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


def test_rayjob_runs_the_archive_job_on_gpu_workers() -> None:
    job = _yaml("kuberay-rayjob.yaml")
    assert job["apiVersion"].startswith("ray.io/") and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.archive"]
    assert argv[3].startswith("s3://") and argv[4].startswith("s3://")
    assert argv[argv.index("--address") + 1] == "auto"
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    gpus_per_actor = float(argv[argv.index("--num-gpus-per-actor") + 1])
    assert 0 < gpus_per_actor <= int(limits["nvidia.com/gpu"])
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_ray_cluster_config_has_a_head_and_gpu_workers() -> None:
    cluster = _yaml("ray-cluster-aws.yaml")
    assert cluster["provider"]["type"] == "aws"
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(
        t["node_config"]["InstanceType"].startswith(("g5", "p4d", "p5")) for t in gpu_types
    )
    assert any("ray start --head" in c for c in cluster["head_start_ray_commands"])
    assert any("ray start --address" in c for c in cluster["worker_start_ray_commands"])
    assert cluster["setup_commands"]


def test_runtime_env_excludes_heavy_folders() -> None:
    env = _yaml("runtime_env.yaml")
    assert env["working_dir"] == "."
    for heavy in (".venv/", ".git/"):
        assert heavy in env["excludes"]
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in env["env_vars"])


def test_iam_policy_is_least_privilege() -> None:
    policy = json.loads((INFRA / "iam-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    actions: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        for resource in resources:
            assert resource.startswith("arn:aws:s3:::") and resource != "arn:aws:s3:::*"
            actions.setdefault(resource, set()).update(statement["Action"])
    every = set().union(*actions.values())
    assert not any("*" in a for a in every)  # no wildcard actions
    source = {a for r, acts in actions.items() if "source" in r for a in acts}
    archive = {a for r, acts in actions.items() if "archive" in r for a in acts}
    assert source == {"s3:ListBucket", "s3:GetObject"}  # the source is read-only
    assert {"s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:AbortMultipartUpload"} <= archive
    object_statements = [s for s in policy["Statement"] if "s3:PutObject" in s["Action"]]
    assert all(s["Resource"].endswith("/*") and s["Resource"].count("/") >= 2 for s in object_statements)


def test_dockerfile_builds_vidarc_on_cuda_with_python311() -> None:
    lines = [line.strip() for line in (INFRA / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    base = next(line for line in instructions if line.startswith("FROM "))
    assert "nvidia/cuda" in base
    assert any("python3.11" in line for line in instructions if line.startswith("RUN"))
    assert any("pip install" in line and ".[wan]" in line for line in instructions)  # + Wan's encoders
    for package in ("codec", "pipeline", "jobs"):
        assert any(line.startswith(f"COPY {package} ") for line in instructions)
    entrypoint = next(line for line in instructions if line.startswith("ENTRYPOINT"))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT").strip()) == ["vidarc"]


def test_pyproject_declares_its_license_as_an_spdx_string_setuptools_accepts(
    tmp_path: Path, monkeypatch
) -> None:
    """PEP 639: `license = "Apache-2.0"` (the table form is deprecated and warns on every build); the
    metadata builds with warnings as errors and states the expression."""
    import shutil
    import warnings

    import pytest
    from setuptools import build_meta

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    for package in ("codec", "pipeline", "jobs"):  # the packages' names, not their contents
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").touch()
    monkeypatch.chdir(tmp_path)  # setuptools builds the directory it runs in
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = build_meta.prepare_metadata_for_build_wheel(str(tmp_path))
    assert "License-Expression: Apache-2.0" in (tmp_path / info / "METADATA").read_text()
