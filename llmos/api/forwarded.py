"""The client address of a request: the socket peer, or, when that peer is a trusted proxy, the
address its `X-Forwarded-For` (else RFC 7239 `Forwarded`) header names.

The header is read right to left: each proxy appends the address it received the request from,
so the entries a trusted proxy wrote are at the end and anything a client forged is further
left. The first address that is not a trusted proxy is the client. Garbage (a bad address, a
header too long) never raises: the walk stops at the last address it could trust.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_HOPS = 32  # entries looked at, from the right; a longer chain is someone's garbage


@functools.lru_cache(maxsize=8)
def trusted_networks(proxies: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The networks of `security.trusted_proxies` (validated when settings load)."""
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def client_address(
    peer: str,
    trusted: Sequence[IPNetwork],
    forwarded_for: Iterable[str],
    forwarded: Iterable[str],
) -> str:
    """The address to count and audit a request under.

    `peer` is the socket peer; `forwarded_for` and `forwarded` are the values of every
    `X-Forwarded-For` and `Forwarded` header, in order of arrival.
    """
    hop = parse_address(peer)
    if hop is None:
        return peer
    if not _is_trusted(hop, trusted):
        return str(hop)
    chain = _split_xff(forwarded_for) or _split_forwarded(forwarded)
    for entry in reversed(chain[-MAX_HOPS:]):
        address = parse_address(entry)
        if address is None:
            break
        hop = address
        if not _is_trusted(hop, trusted):
            break
    return str(hop)


def parse_address(text: str) -> IPAddress | None:
    """An IP address from `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` or `[::1]:80`; else None."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def _split_xff(values: Iterable[str]) -> list[str]:
    return [part for value in values for part in value.split(",") if part.strip()]


def _split_forwarded(values: Iterable[str]) -> list[str]:
    """The `for=` parameter of each element of `Forwarded: for=1.2.3.4;proto=https, for=...`;
    an element without one (or with an obfuscated `for=_hidden`) ends the usable chain there."""
    found: list[str] = []
    for value in values:
        for element in value.split(","):
            params = dict(_pair(p) for p in element.split(";") if "=" in p)
            found.append(params.get("for", ""))
    return found


def _pair(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name.strip().lower(), value.strip()
