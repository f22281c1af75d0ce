"""Run-time TLS material: a real handshake over a local socket pair trusts our CA and only our CA."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from turnbench.tls import TLSMaterial, generate_tls, load_ca, tls_at

TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def material() -> TLSMaterial:
    return generate_tls()


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str) -> bytes:
    """TLS handshake plus one echoed message over ``socket.socketpair()``; the server runs in a thread.

    Returns: what the client read back. Raises: the client's ``ssl`` error if the handshake fails.
    """
    server_sock, client_sock = socket.socketpair()
    server_errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                tls.sendall(tls.recv(64))
        except (OSError, ssl.SSLError) as exc:  # expected when the client rejects us
            server_errors.append(exc)
        finally:
            server_sock.close()

    server_sock.settimeout(TIMEOUT_S)
    client_sock.settimeout(TIMEOUT_S)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            tls.sendall(b"ping")
            return tls.recv(64)
    finally:
        client_sock.close()
        thread.join(TIMEOUT_S)
        assert not thread.is_alive()


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost", "::1"])
def test_handshake_with_generated_ca(material: TLSMaterial, hostname: str) -> None:
    assert _handshake(material.server_ssl_context(), material.client_ssl_context(), hostname) == b"ping"


def test_handshake_fails_with_another_ca(material: TLSMaterial) -> None:
    stranger = generate_tls()
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(material.server_ssl_context(), stranger.client_ssl_context(), "127.0.0.1")


def test_handshake_fails_for_a_name_not_in_the_cert(material: TLSMaterial) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(material.server_ssl_context(), material.client_ssl_context(), "example.com")


def test_write_and_load_ca(material: TLSMaterial, tmp_path: Path) -> None:
    paths = material.write(tmp_path / "tls")
    assert paths.ca_pem.read_bytes() == material.ca_pem_bytes
    assert paths.cert_pem.read_bytes() == material.cert_chain_pem_bytes
    assert paths.key_pem.read_bytes() == material.private_key_pem_bytes
    assert stat.S_IMODE(paths.key_pem.stat().st_mode) == 0o600
    for blob in (material.ca_pem_bytes, material.cert_chain_pem_bytes):
        assert blob.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in material.private_key_pem_bytes

    # a client in another process, given only the CA file the server wrote
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(paths.cert_pem, paths.key_pem)
    assert _handshake(server_ctx, load_ca(paths.ca_pem), "localhost") == b"ping"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(generate_tls().server_ssl_context(), load_ca(paths.ca_pem), "localhost")


def test_client_trusts_only_our_ca(material: TLSMaterial) -> None:
    assert len(material.client_ssl_context().get_ca_certs()) == 1
    ctx = material.client_ssl_context()
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_servers_started_with_one_ca_path_share_one_ca(tmp_path: Path) -> None:
    """Three ``turnbench serve … --ca-out PATH`` in three shells: the first makes the CA, the others reuse it,
    so the one file a client trusts verifies all of them (the README's two-shell example)."""
    path = tmp_path / "ca.pem"
    first, second = tls_at(path), tls_at(path)
    assert first.ca_pem_bytes == second.ca_pem_bytes == path.read_bytes()
    assert first.cert_chain_pem_bytes != second.cert_chain_pem_bytes  # each server its own leaf
    key = path.with_name("ca.pem.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for material in (first, second):
        assert _handshake(material.server_ssl_context(), load_ca(path), "127.0.0.1") == b"ping"
    path.write_bytes(b"not a certificate")  # damaged: a new CA replaces it rather than failing the start
    third = tls_at(path)
    assert third.ca_pem_bytes == path.read_bytes() != first.ca_pem_bytes
