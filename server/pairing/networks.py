"""Which network a client address belongs to, and the caps on pending pairing codes.

Per address alone is not enough: anyone with a /24 (or, far cheaper, an IPv6 /64) has hundreds
of addresses. Codes are also capped per network (IPv4 /24, IPv6 /64), and addresses that cannot
be the local network (public ones) may together hold only part of the table, so a device that is
physically present, on the owner's LAN, can still get a code while the internet floods us.
A remote host cannot open a TCP connection from a private, link-local or loopback source
address, so "local" is as good as the socket (or a declared proxy's X-Forwarded-For) says.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address (zone id dropped, IPv4-mapped IPv6 as IPv4), None when it is not an IP."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def network_of(address: str) -> str:
    """'192.168.1.7' -> '192.168.1.0/24'; '2001:db8:1:2::9' -> '2001:db8:1:2::/64'; else as is."""
    ip = _ip(address)
    if ip is None:
        return address
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def is_local(address: str) -> bool:
    """Private (RFC 1918, ULA), link-local or loopback: an address only a nearby host can use."""
    ip = _ip(address)
    if ip is None:
        return False
    return ip.is_private or ip.is_loopback or ip.is_link_local


@dataclass(slots=True, frozen=True)
class PendingCaps:
    """How many pairing codes may wait at once: in all, per address, per public network, and
    from public addresses together (0 = no such cap)."""

    max_total: int
    max_per_address: int
    max_per_network: int = 0
    max_public: int = 0

    def refusal(self, pending_addresses: Iterable[str], address: str) -> str | None:
        """Why one more code for `address` is refused, given the addresses of the codes pending
        now (other devices' codes are never evicted), or None."""
        addresses = list(pending_addresses)
        if self.max_total and len(addresses) >= self.max_total:
            return f"{len(addresses)} codes pending in all"
        if self.max_per_address and sum(a == address for a in addresses) >= self.max_per_address:
            return f"codes pending for {address}"
        if is_local(address):
            return None  # the owner's own network: only the per-address and total caps
        if self.max_public and sum(not is_local(a) for a in addresses) >= self.max_public:
            return "codes pending for public addresses (the rest is kept for the local network)"
        net = network_of(address)
        if self.max_per_network and sum(network_of(a) == net for a in addresses) >= self.max_per_network:
            return f"codes pending for network {net}"
        return None
