"""Transport rules: where a server may listen without authentication, and its TLS files.

`auth none` is allowed only on a loopback address (127.0.0.0/8, ::1, localhost): on any other
address anyone who can reach the port would be admin. TLS needs both a certificate and a key.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from llmos.config import SecurityConfig
from llmos.errors import InvalidRequest


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, config: SecurityConfig) -> None:
    """Refuse to serve without authentication on a non-loopback address; check TLS files."""
    if config.auth == "none" and not is_loopback_host(host):
        raise InvalidRequest(
            f"refusing to serve without authentication on {host}: anyone who can reach it "
            "would act as admin",
            code="insecure_bind",
            hint="use --auth keys (the default), or bind 127.0.0.1",
        )
    tls_files = (config.tls_cert_file, config.tls_key_file)
    if any(tls_files) and not all(tls_files):
        raise InvalidRequest("TLS needs both --tls-cert and --tls-key", code="tls_incomplete")
    for path in tls_files:
        if path is not None and not Path(path).is_file():
            raise InvalidRequest(f"TLS file {Path(path).name} does not exist", code="tls_missing")
