"""dicomnet.ports: ports handed out in one process are distinct and free when handed out."""

import socket

from dicomnet.ports import free_port


def test_free_ports_are_distinct_and_bindable():
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    for port in ports[-5:]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
