"""What the multi-process tests share: a free TCP port for a gloo rendezvous on this machine."""

import socket


def free_port() -> int:
    """A port nobody listens on now, for ``init_method=f"tcp://127.0.0.1:{port}"``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
