"""Transport: HTTPS with a self-signed certificate made here; no keyless serving off loopback."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llmos.config import SecurityConfig
from llmos.errors import InvalidRequest
from llmos.security.secretfile import read_secret_file
from llmos.security.transport import check_bind, is_loopback_host
from tests.serving import TEST_ENV, ServerProcess


def make_cert(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_bind_rules() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback_host(host)
        check_bind(host, SecurityConfig(auth="none"))
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.com"):
        assert not is_loopback_host(host)
        with pytest.raises(InvalidRequest, match="without authentication"):
            check_bind(host, SecurityConfig(auth="none"))
        check_bind(host, SecurityConfig(auth="keys"))
    with pytest.raises(InvalidRequest, match="both"):
        check_bind("127.0.0.1", SecurityConfig(tls_cert_file=Path("/x.pem")))


def test_serve_without_auth_on_all_interfaces_refuses_to_start(tmp_path: Path) -> None:
    env = {**TEST_ENV, "LLMOS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "llmos.cli.app", "serve", "--host", "0.0.0.0", "--auth", "none"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "refusing to serve without authentication on 0.0.0.0" in proc.stderr
    assert "loading" not in proc.stdout  # refused before the model was loaded


@pytest.mark.slow
def test_https_round_trip(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    server = ServerProcess(
        "--tls-cert", str(cert), "--tls-key", str(key), env={"LLMOS_SECURITY__AUTH": "keys"}
    ).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        admin = read_secret_file(Path(server.home.name) / "admin.key")
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=server.url, verify=context, timeout=120) as http:
            assert http.get("/health").status_code == 200
            body = {
                "model": "smollm2",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
            }
            r = http.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {admin}"}
            )
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is rejected
            httpx.get(f"{server.url}/health", timeout=30)
        plain = server.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{plain}/health", timeout=30).raise_for_status()
    finally:
        server.stop()
