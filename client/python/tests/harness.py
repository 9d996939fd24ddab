"""The real processes the tests talk to: moto (local S3) and expresscache-server.

Both start on free ports on 127.0.0.1 and fail the test loudly, with their
log, when they cannot start: a missing binary is an error, never a skip.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

REPO_ROOT = Path(__file__).resolve().parents[3]
REGION = "us-east-1"


def bin_dir() -> Path:
    """Where the Rust binaries are: ``$EXPRESSCACHE_BIN_DIR``, else target/debug."""
    return Path(os.environ.get("EXPRESSCACHE_BIN_DIR") or REPO_ROOT / "target" / "debug")


def moto_binary() -> Path:
    """``$EXPRESSCACHE_MOTO_SERVER`` (as for the Rust tests), else .venv/bin/moto_server."""
    return Path(
        os.environ.get("EXPRESSCACHE_MOTO_SERVER") or REPO_ROOT / ".venv" / "bin" / "moto_server"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class ExitedEarly(RuntimeError):
    """The process ended before it listened (e.g. it lost a port race)."""


class Process:
    """A child process with its output in a log file, killed on stop."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def spawn(self, argv: Sequence[str], env: dict[str, str], port: int, limit: float = 30) -> None:
        """Starts ``argv`` and waits until it listens on ``port``."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(argv), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + limit
        while not listening(port):
            code = self.proc.poll()
            if code is not None:
                raise ExitedEarly(f"{self.name} exited with {code} before listening:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not listen on {port} in {limit}s:\n{self.log()}")
            time.sleep(0.05)

    def kill9(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Moto:
    """moto's S3 server on a free port."""

    def __init__(self, workdir: Path) -> None:
        binary = moto_binary()
        if not binary.exists():
            raise RuntimeError(
                f"moto server not found at {binary}: run client/python/test.sh (it installs "
                "moto into .venv) or set EXPRESSCACHE_MOTO_SERVER"
            )
        self.process = Process("moto", workdir / "moto.log")
        # Another process may take the free port before moto binds it.
        for _ in range(5):
            self.port = free_port()
            try:
                self.process.spawn(
                    [str(binary), "-H", "127.0.0.1", "-p", str(self.port)], dict(os.environ), self.port
                )
                break
            except ExitedEarly:
                continue
        else:
            raise RuntimeError(f"moto did not start (tried 5 ports):\n{self.process.log()}")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            # CreateBucket of a directory bucket is a regional call: no S3
            # Express session for a bucket that does not exist yet.
            config=Config(s3={"disable_s3_express_session_auth": True}, max_pool_connections=32),
        )

    def stop(self) -> None:
        self.process.stop()


def numbered_keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


class Buckets:
    """A seeded source bucket and an empty directory bucket, unique names."""

    def __init__(self, moto: Moto, keys: Iterable[str], size: int = 64) -> None:
        tag = uuid.uuid4().hex[:10]
        self.source = f"src-{tag}"
        self.directory = f"cache-{tag}--use1-az4--x-s3"
        self.s3 = moto.s3()
        self.keys = sorted(keys)
        self.size = size
        create_buckets(self.s3, self.source, self.directory)
        body = b"x" * size
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: self.s3.put_object(Bucket=self.source, Key=k, Body=body), self.keys))

    def cached_keys(self, prefix: str = "") -> list[str]:
        """Keys in the directory bucket under ``prefix``."""
        keys: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.directory, Prefix=prefix
        )
        for page in pages:
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)


def create_buckets(s3: Any, source: str, directory: str) -> None:
    s3.create_bucket(Bucket=source)
    s3.create_bucket(
        Bucket=directory,
        CreateBucketConfiguration={
            "Location": {"Type": "AvailabilityZone", "Name": "use1-az4"},
            "Bucket": {"DataRedundancy": "SingleAvailabilityZone", "Type": "Directory"},
        },
    )


class Server:
    """expresscache-server with its own SQLite index and port; it can be
    killed and started again on the same port and index, as an operator
    would."""

    def __init__(self, moto: Moto, *extra: str, index: str | None = None) -> None:
        self.binary = bin_dir() / "expresscache-server"
        if not self.binary.exists():
            raise RuntimeError(
                f"{self.binary} not found: build it (cargo build -p expresscache-server) "
                "or set EXPRESSCACHE_BIN_DIR"
            )
        self._dir = tempfile.TemporaryDirectory(prefix="expresscache-test-")
        self.workdir = Path(self._dir.name)
        self.s3_endpoint = moto.endpoint
        self.extra = list(extra)
        # Replicas on one host may share one SQLite index file.
        self.index = index or f"sqlite://{self.workdir / 'index.db'}"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = Process("expresscache-server", self.workdir / "server.log")
        self.start()

    def start(self) -> None:
        """Starts the process (again) and waits until it listens."""
        # Only the settings given here: none of the caller's EXPRESSCACHE_*
        # or AWS profile leaks into the server under test.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EXPRESSCACHE_", "AWS_"))
        }
        env.update(
            EXPRESSCACHE_INDEX=self.index,
            AWS_ENDPOINT_URL=self.s3_endpoint,
            AWS_REGION=REGION,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
        )
        argv = [str(self.binary), "--listen", f"127.0.0.1:{self.port}", *self.extra]
        self.process.spawn(argv, env, self.port)

    def kill9(self) -> None:
        self.process.kill9()

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> None:
        self.process.stop()
        self._dir.cleanup()
