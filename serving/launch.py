"""Start `graft serve` in a subprocess on a free loopback port and wait until it is healthy.

Used by `make demo`, the tests and the serving benchmark: the server always runs as a
real separate process, exactly as users run it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["ServerProcess"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`graft serve` in a child process on free loopback ports; as a context manager it
    waits until the health check answers SERVING and stops the server on exit.
    """

    def __init__(
        self,
        base_path: str,
        model_name: str,
        *,
        rest: bool = False,
        poll_seconds: float = 1.0,
        extra: list[str] | None = None,
        log_path: str | None = None,
        tls: dict[str, bytes] | None = None,
    ):
        """tls: channel credentials for the health check when the server runs with --ssl-*:
        {"root_certificates": ..., "private_key": ..., "certificate_chain": ...}.
        """
        self.port = free_port()
        self.rest_port = free_port() if rest else 0
        cmd = [
            sys.executable,
            "-m",
            "graft.pipeline.cli",
            "serve",
            "--model-base-path",
            base_path,
            "--model-name",
            model_name,
            "--port",
            str(self.port),
            "--rest-port",
            str(self.rest_port),
            "--poll-seconds",
            str(poll_seconds),
            *(extra or []),
        ]
        self.log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=self.log, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        )
        self.target = f"127.0.0.1:{self.port}"
        self.tls = tls

    def channel(self) -> grpc.Channel:
        if self.tls:
            return grpc.secure_channel(self.target, grpc.ssl_channel_credentials(**self.tls))
        return grpc.insecure_channel(self.target)

    def wait_healthy(self, timeout: float = 120.0) -> ServerProcess:
        deadline = time.time() + timeout
        with self.channel() as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with code {self.proc.returncode}")
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.3)
        raise TimeoutError(f"server on {self.target} not healthy within {timeout}s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()
        return self.proc.returncode

    def __enter__(self):
        return self.wait_healthy()

    def __exit__(self, *exc):
        self.stop()
