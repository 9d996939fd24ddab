"""TLS, mutual TLS and bearer tokens against the real server: certificates
made by openssl in the test, a tokens file of hashes as the server reads
it (``PRINCIPAL sha256:HEX``)."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from expresscache import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    AsyncClient,
    Client,
    OperationFilter,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    WarmRequest,
)
from harness import Buckets, Moto, Server, numbered_keys
from pki import Ca, Issued

TOKEN = "tok-ci-0123"


@dataclass(frozen=True)
class Pki:
    ca: Ca
    other_ca: Ca
    server: Issued
    launcher: Issued
    stranger: Issued
    """Signed by the other CA."""
    tokens: Path


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="expresscache-pki-") as d:
        directory = Path(d)
        ca = Ca(directory, "good")
        other = Ca(directory, "other")
        tokens = directory / "tokens"
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        tokens.write_text(f"# principal   hash of its token\nci-runner sha256:{digest}\n")
        yield Pki(
            ca=ca,
            other_ca=other,
            server=ca.server("server"),
            launcher=ca.client("launcher", "launcher", "genomics"),
            stranger=other.client("stranger", "stranger", "elsewhere"),
            tokens=tokens,
        )


@pytest.fixture(scope="module")
def secure_server(moto: Moto, pki: Pki) -> Iterator[Server]:
    """TLS, client certificates signed by the CA, and bearer tokens: a
    caller names itself by either."""
    s = Server(
        moto,
        "--tls-cert", str(pki.server.cert),
        "--tls-key", str(pki.server.key),
        "--tls-client-ca", str(pki.ca.cert),
        "--auth-tokens", str(pki.tokens),
    )
    yield s
    s.stop()


def https(server: Server) -> str:
    return f"https://127.0.0.1:{server.port}"


def audited(server: Server, principal: str) -> bool:
    return any("audit" in line and principal in line for line in server.log().splitlines())


def test_a_warm_over_tls_with_a_token(
    secure_server: Server, pki: Pki, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("d/", 12))
    with Client(https(secure_server), ca_cert=str(pki.ca.cert), token=TOKEN, timeout=30) as client:
        report = client.warm_and_wait(
            WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["d/"])
        )
        assert report.succeeded and report.counters.objects_copied == 12, report
        # Unary calls carry the token too.
        assert client.status(report.operation_id).done
        page = client.list_operations(OperationFilter.ALL)
        assert report.operation_id in [o.operation_id for o in page.operations]
    assert src.cached_keys() == numbered_keys("d/", 12)
    assert audited(secure_server, 'principal="ci-runner"'), secure_server.log()


@pytest.mark.asyncio
async def test_the_async_client_speaks_tls_with_a_token_file(
    secure_server: Server, pki: Pki, buckets: Callable[..., Buckets], tmp_path: Path
) -> None:
    src = buckets(numbered_keys("d/", 3))
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}  \nsecond line ignored\n")
    async with AsyncClient(
        https(secure_server), ca_cert=pki.ca.cert.read_bytes(), token_file=token_file
    ) as client:
        report = await client.warm_and_wait(
            WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["d/"])
        )
        assert report.succeeded and report.counters.objects_copied == 3
        assert (await client.status(report.operation_id)).done


def test_the_token_comes_from_the_environment_or_a_token_file(
    secure_server: Server, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def list_ops(token: str | None = None, token_file: Path | None = None) -> None:
        with Client(
            https(secure_server), ca_cert=str(pki.ca.cert), token=token, token_file=token_file, timeout=30
        ) as c:
            c.list_operations(OperationFilter.ALL, page_size=1)

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    list_ops()
    # An explicit argument wins over the environment.
    with pytest.raises(Unauthenticated, match="not registered"):
        list_ops(token="tok-wrong")
    monkeypatch.delenv(TOKEN_ENV)

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(token_file))
    list_ops()
    list_ops(token_file=token_file)
    monkeypatch.delenv(TOKEN_FILE_ENV)

    with pytest.raises(Unauthenticated, match="EXPRESSCACHE_TOKEN"):
        list_ops()


def test_a_wrong_token_is_unauthenticated_and_not_retried(
    secure_server: Server, pki: Pki, buckets: Callable[..., Buckets], caplog: pytest.LogCaptureFixture
) -> None:
    src = buckets(numbered_keys("d/", 2))
    request = WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["d/"])
    # Generous pauses: a retry would show in the time taken as well as the log.
    policy = RetryPolicy(attempts=5, initial_backoff=2.0, failover_pause=2.0)
    with caplog.at_level(logging.WARNING, logger="expresscache"):
        for token in ["tok-ci-9999", None]:
            with Client(
                https(secure_server), ca_cert=str(pki.ca.cert), token=token, retry=policy
            ) as client:
                t0 = time.monotonic()
                with pytest.raises(Unauthenticated) as caught:
                    client.warm_and_wait(request)
                assert time.monotonic() - t0 < 2
                assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert "reconnecting" not in caplog.text
    assert src.cached_keys() == []


def test_mutual_tls_names_the_caller_by_its_certificate(
    secure_server: Server, pki: Pki, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("d/", 2))
    with Client(
        https(secure_server),
        ca_cert=str(pki.ca.cert),
        client_cert=str(pki.launcher.cert),
        client_key=str(pki.launcher.key),
    ) as client:
        report = client.warm_and_wait(
            WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["d/"])
        )
        assert report.succeeded
    assert audited(secure_server, "CN=launcher,O=genomics"), secure_server.log()

    # A certificate from another CA fails the handshake: nothing to retry into.
    stranger = Client(
        https(secure_server),
        ca_cert=str(pki.ca.cert),
        client_cert=pki.stranger.cert.read_bytes(),
        client_key=pki.stranger.key.read_bytes(),
        connect_timeout=5,
        timeout=10,
    )
    with stranger, pytest.raises((Unavailable, Unauthenticated)):
        stranger.list_operations(OperationFilter.ALL)


def test_the_server_certificate_is_checked_against_the_ca_or_the_system_roots(
    secure_server: Server, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Client(https(secure_server), ca_cert=str(pki.other_ca.cert), token=TOKEN, connect_timeout=5) as c:
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="ca_cert"):
            c.list_operations(OperationFilter.ALL)
        assert time.monotonic() - t0 < 5, "a failed handshake fails at once"
    # Without a CA, https:// trusts the system's roots: here $SSL_CERT_FILE,
    # which OpenSSL's default paths honour, names the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert))
    with Client(https(secure_server), token=TOKEN, connect_timeout=5, timeout=30) as c:
        c.list_operations(OperationFilter.ALL)
    # Plain http to a TLS port gets nowhere.
    plain = Client(f"127.0.0.1:{secure_server.port}", token=TOKEN, connect_timeout=3, timeout=5)
    with plain, pytest.raises(Unavailable):
        plain.list_operations(OperationFilter.ALL)
