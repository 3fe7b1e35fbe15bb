"""Whether a hub can be reached, asked once and quickly, so offline work fails in one line."""

import socket


def reachable(host: str, timeout: float = 3.0) -> bool:
    """True if `host` resolves (the sandboxes and offline notebooks kft runs in fail here)."""
    previous = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(timeout)
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(previous)
