"""How a client checks the server and proves who it is: TLS (a CA to
trust, a client certificate for mutual TLS) and a bearer token.

The same settings and environment variables as the CLI (client/src/cli):

- ``https://`` endpoints are checked against ``ca_cert``
  (``$EXPRESSCACHE_CA_CERT``), and only it; without one, against the
  system's trusted roots;
- ``client_cert`` and ``client_key`` (``$EXPRESSCACHE_CLIENT_CERT``,
  ``$EXPRESSCACHE_CLIENT_KEY``), together, for mutual TLS;
- the token is sent with every call as ``authorization: Bearer TOKEN``: from
  ``token`` (``$EXPRESSCACHE_TOKEN``) or the first line of ``token_file``
  (``$EXPRESSCACHE_TOKEN_FILE``).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TypeAlias

import grpc

CA_CERT_ENV = "EXPRESSCACHE_CA_CERT"
CLIENT_CERT_ENV = "EXPRESSCACHE_CLIENT_CERT"
CLIENT_KEY_ENV = "EXPRESSCACHE_CLIENT_KEY"
TOKEN_ENV = "EXPRESSCACHE_TOKEN"
TOKEN_FILE_ENV = "EXPRESSCACHE_TOKEN_FILE"

AUTHORIZATION = "authorization"
"""The metadata key of the token (the value is ``Bearer TOKEN``)."""

Pem: TypeAlias = "str | os.PathLike[str] | bytes"
"""A PEM file's path, or its contents as bytes."""


class Credentials:
    """TLS settings and a token, read once; what a client connects and
    calls with. Build it with :meth:`load` (``Client`` does)."""

    def __init__(
        self,
        *,
        ca: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        token: str | None = None,
    ) -> None:
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together (mutual TLS)")
        self.ca = ca
        self.client_cert = client_cert
        self.client_key = client_key
        self.metadata: tuple[tuple[str, str], ...] = ()
        """What every call carries: the token, if any."""
        token = token.strip() if token is not None else ""
        if token:
            value = f"Bearer {token}"
            # Not echoed: a token must not reach logs or tracebacks.
            if not all(0x20 <= ord(c) <= 0x7E for c in value):
                raise ValueError("the token has characters a header cannot carry")
            self.metadata = ((AUTHORIZATION, value),)
        self._channel_credentials: grpc.ChannelCredentials | None = None

    @classmethod
    def load(
        cls,
        *,
        ca_cert: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
    ) -> Credentials:
        """Reads the files named (or ``$EXPRESSCACHE_*`` for those not given).

        The token: ``token``, else the first line of ``token_file``, else
        ``$EXPRESSCACHE_TOKEN``, else the first line of
        ``$EXPRESSCACHE_TOKEN_FILE``. Giving both a token and a token file
        (as arguments, or both in the environment) is an error, as for the
        CLI; ``token=""`` sends none whatever the environment says.
        """
        ca_cert = ca_cert if ca_cert is not None else os.environ.get(CA_CERT_ENV) or None
        if client_cert is None and client_key is None:
            client_cert = os.environ.get(CLIENT_CERT_ENV) or None
            client_key = os.environ.get(CLIENT_KEY_ENV) or None
        if (client_cert is None) != (client_key is None):
            raise ValueError(
                "client_cert and client_key go together (mutual TLS): give both "
                f"(or ${CLIENT_CERT_ENV} and ${CLIENT_KEY_ENV})"
            )
        return cls(
            ca=_read_pem("ca_cert", ca_cert, b"CERTIFICATE") if ca_cert is not None else None,
            client_cert=(
                _read_pem("client_cert", client_cert, b"CERTIFICATE")
                if client_cert is not None
                else None
            ),
            client_key=(
                _read_pem("client_key", client_key, b"PRIVATE KEY")
                if client_key is not None
                else None
            ),
            token=_resolve_token(token, token_file),
        )

    @property
    def tls_options(self) -> bool:
        """Whether a CA or a client certificate was given (they need https://)."""
        return self.ca is not None or self.client_cert is not None

    @property
    def has_token(self) -> bool:
        return bool(self.metadata)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For ``https://`` endpoints: the CA given, else the system's roots."""
        if self._channel_credentials is None:
            self._channel_credentials = grpc.ssl_channel_credentials(
                root_certificates=self.ca if self.ca is not None else system_roots(),
                private_key=self.client_key,
                certificate_chain=self.client_cert,
            )
        return self._channel_credentials

    def __repr__(self) -> str:
        # Never the token itself.
        return (
            f"Credentials(ca={self.ca is not None}, client_cert={self.client_cert is not None}, "
            f"token={self.has_token})"
        )


def system_roots() -> bytes | None:
    """The system's trusted CA certificates (``$SSL_CERT_FILE``, else
    OpenSSL's default bundle), as the CLI trusts the platform's roots; None
    (grpc's own bundled roots) where there is no such file."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return Path(candidate).read_bytes()
    return None


def _read_pem(what: str, source: Pem, marker: bytes) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise ValueError(f"{what} {os.fspath(source)}: {e.strerror or e}") from e
    if b"-----BEGIN " not in data or marker not in data:
        origin = "" if isinstance(source, bytes) else f" {os.fspath(source)}"
        kind = "certificate" if marker == b"CERTIFICATE" else "private key"
        raise ValueError(f"{what}{origin}: not a PEM {kind}")
    return data


def _resolve_token(token: str | None, token_file: str | os.PathLike[str] | None) -> str | None:
    if token is not None and token_file is not None:
        raise ValueError("give a token or a token file, not both")
    if token is not None:
        return token
    if token_file is not None:
        return _read_token_file("token_file", token_file)
    env_token = os.environ.get(TOKEN_ENV)
    env_file = os.environ.get(TOKEN_FILE_ENV)
    if env_token and env_file:
        raise ValueError(f"${TOKEN_ENV} and ${TOKEN_FILE_ENV} are both set; set one")
    if env_token:
        return env_token
    if env_file:
        return _read_token_file(f"${TOKEN_FILE_ENV}", env_file)
    return None


def _read_token_file(what: str, path: str | os.PathLike[str]) -> str:
    """The first line of a token file, trimmed (as the CLI reads it)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{what} {os.fspath(path)}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {os.fspath(path)}: not UTF-8") from None
    lines = text.splitlines()
    return lines[0].strip() if lines else ""
