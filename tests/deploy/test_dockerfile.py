"""Static checks of the Dockerfile and .dockerignore."""

from __future__ import annotations

import re

from tests.support.deployfiles import (
    DOCKERIGNORE,
    cmd_argv,
    dockerfile_instructions,
    final_stage,
    healthcheck_argv,
    resolve_from,
)


def test_image_is_built_from_a_pytorch_cuda_image() -> None:
    froms = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    image = resolve_from(final_stage()[0][1])
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-(runtime|devel)", image), image
    # Every stage builds on the same base, so compiled wheels match its Python.
    assert {resolve_from(f) for f in froms} == {image}


def test_image_runs_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in final_stage() if keyword == "USER"]
    assert users, "the image never leaves root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0", ""), users[-1]


def test_healthcheck_runs_worker_health() -> None:
    assert healthcheck_argv() == ["worker", "health"]
    assert cmd_argv()[0] == "worker"


def test_hdf5plugin_is_built_from_source_with_avx2_and_openmp() -> None:
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    (build,) = [run for run in runs if "--no-binary hdf5plugin" in run]
    for setting in ("HDF5PLUGIN_AVX2=True", "HDF5PLUGIN_OPENMP=True", "HDF5PLUGIN_NATIVE=False"):
        assert setting in build, f"hdf5plugin build lacks {setting}"
    # ...and the image refuses to build if the installed filters lack them.
    assert any("build_config" in run and "avx2" in run and "openmp" in run for run in runs)


def test_pip_keeps_the_base_image_torch() -> None:
    for keyword, rest in final_stage():
        if keyword == "RUN" and "pip install" in rest:
            for command in re.findall(r"pip install[^;&]*", rest):
                assert "-c /tmp/constraints.txt" in command, command
            assert not re.search(r"pip install[^;&]*\btorch\b", rest), rest


def test_dockerignore_allows_only_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from an allow-list, so data and .venv never ship"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for keyword, rest in dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            assert source.rstrip("*") in allowed, f"COPY {source} is excluded by .dockerignore"
