"""Parsing shared by store URLs: a comma-separated list of hosts, each with an optional port."""

from __future__ import annotations

__all__ = ["parse_hosts"]


def parse_hosts(url: str, hosts: str, default_host: str, default_port: int) -> list[tuple[str, int]]:
    """``h1:p1,[::1]:p2,h3`` (the netloc after any credentials) as ``(host, port)`` pairs; a bad or
    out-of-range port raises ValueError naming the URL and the part. Empty parts are skipped."""
    out: list[tuple[str, int]] = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):
            host, _, after = part[1:].partition("]")
            port_s = after[1:] if after.startswith(":") else ""
        else:
            host, _, port_s = part.partition(":")
        port = default_port
        if port_s:
            if not port_s.isdigit():
                raise ValueError(f"store URL {url!r}: the port of {part!r} is not a number")
            port = int(port_s)
            if not 0 < port < 65536:
                raise ValueError(f"store URL {url!r}: the port of {part!r} is out of range (1-65535)")
        out.append((host or default_host, port))
    return out
