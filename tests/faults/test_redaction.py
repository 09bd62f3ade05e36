"""Passwords never shown, in every form REDIS_URL takes: through the CLI and a worker's log.

A private redis-server with a password for its default user and an ACL user whose
password holds '@', '/', '%' and ':'. Every URL form (upper-case scheme, ``?password=``,
the hard password raw and percent-encoded, ``rediss://``, ``sentinel://``) is used for
``producer status``, ``status --json`` and ``submit``: against the server (they work),
with a wrong password, and at a port nothing listens on. Workers run with some of the
forms, one of them a job. No output, error or log line holds any password, in any
spelling, or any piece of one.
"""

from __future__ import annotations

import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np
import pytest

from producer.samples import detector_frames, write_stack
from tests.faults.private_redis import PrivateRedis
from tests.faults.util import FAULT_ENV, full_log
from tests.support.wait import wait_until
from tests.support.workers import free_port, run_producer, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def token() -> str:
    """A piece of a password that no other text contains by chance."""
    return "zq" + secrets.token_hex(4)


def hard_password() -> tuple[str, list[str]]:
    """A password with every character that ends a part of a URL, and its pieces."""
    pieces = [token() for _ in range(5)]
    a, b, c, d, e = pieces
    return f"{a}@{b}/{c}%{d}:{e}", pieces


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("redaction")
    password = "pw" + secrets.token_hex(8)
    hard, pieces = hard_password()
    redis_ = PrivateRedis(str(folder / "redis"), password=password)
    redis_.start()
    client = redis_.client()
    client.acl_setuser(
        "fsuser", enabled=True, passwords=[f"+{hard}"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    client.close()
    try:
        yield redis_, password, hard, pieces
    finally:
        redis_.stop()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("redaction-data")
    data = write_stack(
        str(folder / "small.h5"), detector_frames(16, 16, 16, seed=9), form="gzip",
        chunk_frames=4,
    )  # fmt: skip
    mask = str(folder / "mask.npy")
    np.save(mask, np.ones((16, 16), bool))
    return data, mask


def forms(port: int, password: str, hard: str, wrong: str, dead: int) -> dict[str, tuple]:
    """name -> (URL, whether it reaches the server)."""
    here = f"127.0.0.1:{port}"
    return {
        "plain": (f"redis://:{password}@{here}/0", True),
        "upper-case scheme": (f"REDIS://:{password}@{here}/0", True),
        "query": (f"redis://{here}/0?password={password}", True),
        "user, encoded": (f"redis://fsuser:{quote(hard, safe='')}@{here}/0", True),
        "user, raw @ / % :": (f"redis://fsuser:{hard}@{here}/0", True),
        "rediss to a plain server": (f"rediss://fsuser:{hard}@{here}/0", False),
        "sentinel, unreachable": (
            f"sentinel://:{hard}@127.0.0.1:{dead};sentinel://:{hard}@127.0.0.1:{dead}/0"
            "?master_name=m",
            False,
        ),
        "wrong password, encoded": (f"redis://fsuser:{quote(wrong, safe='')}@{here}/0", False),
        "wrong password, raw": (f"REDIS://:{wrong}@{here}/0", False),
        "unreachable": (f"redis://:{hard}@127.0.0.1:{dead}/0", False),
    }


def spellings(password: str, pieces: list[str]) -> list[str]:
    return [password, quote(password, safe=""), quote(password), *pieces]


def assert_clean(texts: list[tuple[str, str]], forbidden: list[str]) -> None:
    for where, text in texts:
        for secret in forbidden:
            assert secret not in text, f"{secret!r} shown by {where}:\n{text}"


def test_no_url_form_shows_its_password_in_the_cli(server, small, tmp_path):
    redis_, password, hard, pieces = server
    wrong, wrong_pieces = hard_password()
    data, mask = small
    env = {**FAULT_ENV, "DATA_ROOT": ""}
    dead = free_port()
    runs = []
    for name, (url, reaches) in forms(redis_.port, password, hard, wrong, dead).items():
        out = str(tmp_path / f"out-{len(runs)}.h5")
        for args in (
            ["status"],
            ["status", "--json"],
            ["submit", data, "--mask", mask, "--output", out, "--queue", "q-idle"],
        ):
            runs.append((name, url, reaches, args))

    def run(item):
        name, url, reaches, args = item
        return item, run_producer(url, *args, env=env, timeout=60)

    texts = []
    with ThreadPoolExecutor(4) as pool:
        for (name, _url, reaches, args), res in pool.map(run, runs):
            where = f"{name}: producer {args[0]}"
            texts.append((where, res.stdout + res.stderr))
            if reaches:
                assert res.returncode == 0, f"{where}: {res.stderr}"
            else:
                assert res.returncode == 3, f"{where}: {res.returncode} {res.stderr}"
                lines = [line for line in res.stderr.splitlines() if line.strip()]
                assert len(lines) == 1 and "Traceback" not in res.stderr, f"{where}: {lines}"
                assert "***@" in lines[0] or "password=***" in lines[0], f"{where}: {lines}"
    forbidden = [password, *spellings(hard, pieces), *spellings(wrong, wrong_pieces)]
    assert_clean(texts, forbidden)


def test_no_url_form_shows_its_password_in_a_worker_log(server, small, tmp_path):
    """Workers with an upper-case scheme and a raw hard password (running a job), with
    the password in the query, and with a wrong password (retrying): their logs, banner
    included, show the URL masked and no password."""
    redis_, password, hard, pieces = server
    wrong, wrong_pieces = hard_password()
    data, mask = small
    env = {**FAULT_ENV, "DATA_ROOT": ""}
    here = f"127.0.0.1:{redis_.port}"
    raw_upper = f"REDIS://fsuser:{hard}@{here}/0"
    query = f"redis://{here}/0?password={password}"
    refused = f"redis://fsuser:{quote(wrong, safe='')}@{here}/0"
    workers = [
        start_worker(url, str(tmp_path), concurrency=1, env=env)
        for url in (raw_upper, query, refused)
    ]
    client = redis_.client()
    try:
        workers[0].wait_ready(client, processes=1, timeout=90)
        workers[1].wait_ready(client, processes=1, timeout=90)
        res = run_producer(
            raw_upper, "submit", data, "--mask", mask, "--output", str(tmp_path / "o.h5"),
            "--queue", workers[0].queue, "--wait", env=env,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr + workers[0].log()
        wait_until(
            lambda: (
                "WRONGPASS" in full_log(workers[2]) or "invalid username" in full_log(workers[2])
            ),
            60,
            "the worker with a wrong password logging its refusal",
        )
    finally:
        for w in workers:
            w.stop()
        client.close()
    logs = [full_log(w) for w in workers]
    for log in logs[:2]:
        assert "@127.0.0.1" in log and "**@" in log, log[-3000:]  # the URL is shown, masked
    forbidden = [password, *spellings(hard, pieces), *spellings(wrong, wrong_pieces)]
    assert_clean([(f"worker {i}", log) for i, log in enumerate(logs)], forbidden)
    assert os.path.exists(tmp_path / "o.h5")
