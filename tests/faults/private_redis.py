"""A ``redis-server`` of a test's own (another port, no persistence, optionally a
password and TLS from a throw-away CA), started and stopped by its pid, never by name."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import quote

import redis

from tests.support.workers import free_port


@dataclass(frozen=True)
class TLSFiles:
    """A test CA and a server certificate it signed (for 127.0.0.1 and localhost)."""

    ca: str
    cert: str
    key: str


def make_tls(folder: str) -> TLSFiles:
    """A throw-away CA and server certificate, made with the openssl command."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "san.ext"), "w", encoding="ascii") as fh:
        fh.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=framestats test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")  # fmt: skip
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return TLSFiles(*(os.path.join(folder, n) for n in ("ca.pem", "server.pem", "server.key")))


class PrivateRedis:
    """A ``redis-server`` of the test's own: another port, no persistence, stopped by pid."""

    def __init__(
        self,
        folder: str,
        password: str | None = None,
        tls: TLSFiles | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.exe = exe
        self.folder = folder
        self.password = password
        self.tls = tls
        #: More redis-server arguments (a unix socket, --sentinel with its config file).
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        os.makedirs(folder, exist_ok=True)

    def url(self, db: int = 0, ca: str | None = None) -> str:
        """The server's URL; with TLS, ``rediss://`` trusting ``ca`` (default: its CA)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/{db}"
        ca = self.tls.ca if ca is None else ca
        query = f"?ssl_ca_certs={ca}" if ca else ""
        return f"rediss://{auth}127.0.0.1:{self.port}/{db}{query}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), decode_responses=True, socket_connect_timeout=2)

    def start(self) -> None:
        argv = [
            self.exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.folder,
            "--logfile",
            os.path.join(self.folder, "redis.log"),
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        argv += list(self.extra)
        if self.tls is not None:
            argv[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            argv += [
                "--tls-cert-file",
                self.tls.cert,
                "--tls-key-file",
                self.tls.key,
                "--tls-ca-cert-file",
                self.tls.ca,
                "--tls-auth-clients",
                "no",
            ]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 10
        client = self.client()
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.RedisError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server on port {self.port} did not start"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def shutdown_nosave(self) -> None:
        """``SHUTDOWN NOSAVE``: Redis goes away and everything it held is lost."""
        assert self.proc is not None
        client = self.client()
        with contextlib.suppress(redis.RedisError):
            client.shutdown(nosave=True)
        client.close()
        self.proc.wait(10)
        self.proc = None

    def restart_empty(self) -> None:
        self.shutdown_nosave()
        self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
