"""Throwaway TLS material made with the openssl CLI, and the stand-ins the docs' examples use
for the paths they write (``/etc/ssl/ca.pem``...): RedisCache loads its TLS files when built."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

#: The passphrase of the encrypted client key the docs' examples name.
DOCUMENTED_PASSPHRASE = "key-passphrase"


def make_certificates(directory: Any) -> dict[str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI.

    The CA states its key usage: Python 3.13 verifies strictly and refuses a CA without it.
    """
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "ca-key", "cert", "key")}
    csr, ext = directory / "server.csr", directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", paths["ca-key"], "-out", paths["ca"]],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", paths["key"], "-out", str(csr)],
        ["x509", "-req", "-in", str(csr), "-CA", paths["ca"], "-CAkey", paths["ca-key"],
         "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", paths["cert"]],
    ]  # fmt: skip
    for step in steps:
        openssl(*step, cwd=directory)
    return paths


def openssl(*argv: str, cwd: Any = None) -> None:
    subprocess.run(["openssl", *argv], check=True, capture_output=True, cwd=cwd)


def documented_files(directory: Path) -> dict[str, str]:
    """Real files under ``directory`` for each TLS path the docs write: a CA, a directory of
    CAs, a certificate and its key encrypted with :data:`DOCUMENTED_PASSPHRASE`."""
    made = make_certificates(directory)
    locked = str(directory / "client.key")
    openssl("pkey", "-in", made["key"], "-aes256", "-passout", f"pass:{DOCUMENTED_PASSPHRASE}",
            "-out", locked)  # fmt: skip
    (directory / "certs").mkdir()
    return {
        "/etc/ssl/ca.pem": made["ca"],
        "/etc/ca.pem": made["ca"],
        "/path/ca.pem": made["ca"],
        "/etc/ssl/certs": str(directory / "certs"),
        "/etc/ssl/client.pem": made["cert"],
        "/etc/ssl/client.key": locked,
    }


def with_real_files(text: str, files: dict[str, str]) -> str:
    """``text`` with every documented TLS path replaced by its real stand-in in ``files``."""
    pattern = "|".join(re.escape(path) for path in sorted(files, key=len, reverse=True))
    return re.sub(rf"(?<![\w/.])({pattern})(?![\w/.])", lambda m: files[m.group(1)], text)


def tls_server_config(
    certs: dict[str, str], port: int, *, client_certs: bool = False
) -> dict[str, str]:
    """redis-server settings that add a TLS port with :func:`make_certificates`' files (the
    plain port stays open: the fixtures probe through it)."""
    return {
        "tls-port": str(port),
        "tls-cert-file": certs["cert"],
        "tls-key-file": certs["key"],
        "tls-ca-cert-file": certs["ca"],
        "tls-auth-clients": "yes" if client_certs else "no",
    }
