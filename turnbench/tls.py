"""TLS material generated at run time: a throw-away CA and one leaf certificate for the loopback names.

Benchmarks run with TLS on by default (docs/concepts/transports.md), and nothing secret is committed: each run makes
a fresh CA
with ``trustme``. A server started in another shell writes its CA PEM to a path it prints, and the client
trusts it with :func:`load_ca`. gRPC takes PEM bytes rather than ``ssl`` contexts, hence the ``*_pem_bytes``
properties. No sockets here: contexts and files only.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import NamedTuple

import trustme

__all__ = ["DEFAULT_IDENTITIES", "TLSMaterial", "TLSPaths", "generate_tls", "load_ca", "tls_at"]

DEFAULT_IDENTITIES: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")


class TLSPaths(NamedTuple):
    """PEM files written by :meth:`TLSMaterial.write`."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


class TLSMaterial:
    """A CA and a leaf certificate it signed for ``identities`` (IP addresses and DNS names)."""

    def __init__(self, identities: tuple[str, ...] = DEFAULT_IDENTITIES, *, ca: trustme.CA | None = None) -> None:
        if not identities:
            raise ValueError("at least one identity is needed")
        self.identities = identities
        self.ca = ca if ca is not None else trustme.CA(organization_name="turnbench test CA")
        self.leaf = self.ca.issue_cert(*identities)

    @property
    def ca_pem_bytes(self) -> bytes:
        """The CA certificate, PEM: what a client must trust."""
        return self.ca.cert_pem.bytes()

    @property
    def cert_chain_pem_bytes(self) -> bytes:
        """The leaf certificate followed by its chain up to (not including) the CA, PEM."""
        return b"".join(blob.bytes() for blob in self.leaf.cert_chain_pems)

    @property
    def private_key_pem_bytes(self) -> bytes:
        """The leaf's private key, PEM (unencrypted)."""
        return self.leaf.private_key_pem.bytes()

    def server_ssl_context(self) -> ssl.SSLContext:
        """A server-side context presenting the leaf certificate (TLS ≥ 1.2, no client certificates)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.leaf.configure_cert(ctx)
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client-side context trusting only this CA, with hostname checking on."""
        # passing cadata keeps the system store out: only this CA is trusted
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca_pem_bytes.decode("ascii"))
        return _pinned_client(ctx)

    def write(self, directory: str | os.PathLike[str]) -> TLSPaths:
        """Write ``ca.pem``, ``cert.pem`` (chain) and ``key.pem`` (mode 0600) into ``directory``.

        Returns: the three paths.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        paths = TLSPaths(root / "ca.pem", root / "cert.pem", root / "key.pem")
        paths.ca_pem.write_bytes(self.ca_pem_bytes)
        paths.cert_pem.write_bytes(self.cert_chain_pem_bytes)
        # create with 0600 from the start, so the key is never readable by others even briefly
        fd = os.open(paths.key_pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.private_key_pem_bytes)
        return paths


def _pinned_client(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def generate_tls(identities: tuple[str, ...] = DEFAULT_IDENTITIES) -> TLSMaterial:
    """A fresh CA and leaf certificate for ``identities`` (default: 127.0.0.1, localhost, ::1)."""
    return TLSMaterial(identities)


def tls_at(ca_path: str | os.PathLike[str], identities: tuple[str, ...] = DEFAULT_IDENTITIES) -> TLSMaterial:
    """TLS material whose CA lives at ``ca_path`` (PEM), its key beside it (``<ca_path>.key``, mode 0600).

    A CA found there is reused: every server started with the same ``--ca-out`` is trusted through that one
    file, as a user running several in different shells expects. Otherwise a new CA is made and written there
    (each file replaced atomically, the key never readable by others).
    """
    cert_path = Path(ca_path)
    key_path = cert_path.with_name(cert_path.name + ".key")
    if cert_path.is_file() and key_path.is_file():
        try:
            ca = trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
        except ValueError:
            pass  # not a CA of ours (or damaged): make a new one below
        else:
            return TLSMaterial(identities, ca=ca)
    material = TLSMaterial(identities)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(key_path, material.ca.private_key_pem.bytes(), mode=0o600)
    _write_atomic(cert_path, material.ca_pem_bytes, mode=0o644)
    return material


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def load_ca(path: str | os.PathLike[str]) -> ssl.SSLContext:
    """A client context trusting only the CA in the PEM file at ``path`` (e.g. one a server wrote)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(path))
    return _pinned_client(ctx)
