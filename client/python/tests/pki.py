"""Certificates for the TLS tests, made with the openssl command line (as
the README's worked example makes them): a CA, server certificates for
127.0.0.1 and localhost, client certificates naming a caller."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl not found: client/python/test.sh installs it (Debian: openssl)")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Ca:
    """A certificate authority in ``directory``, named ``name``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.name = name
        self.cert = directory / f"{name}-ca.pem"
        self.key = directory / f"{name}-ca-key.pem"
        ext = directory / f"{name}-ca.ext"
        ext.write_text(
            "[req]\ndistinguished_name = dn\n[dn]\n"
            "[v3]\nbasicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, keyCertSign, cRLSign\n"
            "subjectKeyIdentifier = hash\n"
        )
        openssl(
            "req", "-x509", *EC_KEY, "-days", "2", "-subj", f"/CN={name} test CA",
            "-config", str(ext), "-extensions", "v3",
            "-keyout", str(self.key), "-out", str(self.cert),
            cwd=directory,
        )

    def _issue(self, stem: str, subject: str, extensions: str) -> Issued:
        key = self.dir / f"{stem}-key.pem"
        csr = self.dir / f"{stem}.csr"
        cert = self.dir / f"{stem}.pem"
        ext = self.dir / f"{stem}.ext"
        ext.write_text(extensions)
        openssl("req", *EC_KEY, "-subj", subject, "-keyout", str(key), "-out", str(csr), cwd=self.dir)
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert),
            cwd=self.dir,
        )
        return Issued(cert=cert, key=key)

    def server(self, stem: str) -> Issued:
        """A server certificate for 127.0.0.1 and localhost."""
        return self._issue(
            f"{self.name}-{stem}",
            "/CN=expresscache test server",
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature\n"
            "extendedKeyUsage = serverAuth\n",
        )

    def client(self, stem: str, cn: str, org: str) -> Issued:
        """A client certificate whose subject is ``CN=cn,O=org``."""
        return self._issue(
            f"{self.name}-{stem}",
            f"/CN={cn}/O={org}",
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature\n"
            "extendedKeyUsage = clientAuth\n",
        )
