"""One REDIS_URL for the command line and the workers, in every form kombu takes: a unix
socket (redis-py's ``unix://`` and kombu's ``redis+socket://``) and Sentinel
(``sentinel://...?master_name=``), each with a password, against real servers."""

from __future__ import annotations

import os
import subprocess
import uuid

import numpy as np
import pytest
import redis

from producer.samples import detector_frames, write_stack
from tests.faults.private_redis import PrivateRedis
from tests.faults.util import FAULT_ENV
from tests.support.reference import check_against_reference, read_output
from tests.support.wait import wait_until
from tests.support.workers import free_port, run_producer, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PASSWORD = "p@ss:w/rd%" + uuid.uuid4().hex[:6]
QUOTED = PASSWORD.replace("%", "%25").replace("@", "%40").replace(":", "%3A").replace("/", "%2F")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A password-protected Redis on a unix socket (and TCP), and a Sentinel watching it."""
    folder = str(tmp_path_factory.mktemp("urls"))
    sock = os.path.join(folder, "redis.sock")
    master = PrivateRedis(os.path.join(folder, "master"), password=PASSWORD,
                          extra=("--unixsocket", sock, "--unixsocketperm", "700"))  # fmt: skip
    master.start()
    try:
        yield from _with_sentinel(folder, sock, master)
    finally:
        master.stop()


def _with_sentinel(folder: str, sock: str, master: PrivateRedis):
    conf = os.path.join(folder, "sentinel.conf")
    sentinel_port = free_port()
    with open(conf, "w") as fh:
        fh.write(
            f"port {sentinel_port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor fsmaster 127.0.0.1 {master.port} 1\n"
            f'sentinel auth-pass fsmaster "{PASSWORD}"\n'
        )
    sentinel = subprocess.Popen(
        [master.exe, conf, "--sentinel"], stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        probe = redis.Redis(port=sentinel_port, socket_connect_timeout=1, decode_responses=True)
        wait_until(lambda: _answers(probe), 10, "the sentinel")
        yield {"unix": sock, "sentinel": sentinel_port, "master": master}
    finally:
        sentinel.terminate()
        sentinel.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.execute_command("SENTINEL", "MASTERS"))
    except redis.RedisError:
        return False


FORMS = {
    "unix://": lambda s: f"unix://:{QUOTED}@{s['unix']}?db=3",
    "redis+socket://": lambda s: f"redis+socket://:{QUOTED}@{s['unix']}?virtual_host=3",
    "sentinel://": lambda s: (
        f"sentinel://:{QUOTED}@127.0.0.1:{s['sentinel']};"
        f"sentinel://:{QUOTED}@127.0.0.1:{s['sentinel']}/3?master_name=fsmaster"
    ),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_the_cli_and_a_worker_share_one_url(servers, tmp_path, form):
    url = FORMS[form](servers)
    frames = detector_frames(12, 16, 16, seed=31)
    data = write_stack(str(tmp_path / "in.h5"), frames, form="gzip", chunk_frames=2)
    labels = (np.arange(256).reshape(16, 16) % 3).astype(np.int32)
    np.save(tmp_path / "m.npy", labels)
    res = run_producer(url, "status")
    assert res.returncode == 0, res.stderr
    worker = start_worker(url, str(tmp_path), env=FAULT_ENV)
    try:
        watch = redis.Redis.from_url(servers["master"].url(db=3), decode_responses=True)
        worker.wait_ready(watch)
        watch.close()
        res = run_producer(
            url, "submit", data, "--mask", str(tmp_path / "m.npy"), "--stats", "sum,max",
            "--chunk-frames", "4", "--queue", worker.queue, "--wait",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr + worker.log()
        log = worker.log()
    finally:
        worker.stop()
    check_against_reference(read_output(str(tmp_path / "in.reduced.h5")), frames, labels,
                            ("sum", "max"))  # fmt: skip
    for secret in (PASSWORD, QUOTED):
        assert secret not in log and secret not in res.stdout + res.stderr
