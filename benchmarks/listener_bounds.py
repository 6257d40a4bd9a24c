"""What one hostile peer can make a node allocate: a PDU header declaring 1 GiB, sent to a receiving
node before any association (no AE title check has happened yet).

Measures the peak Python allocation (tracemalloc) in the node's process and how soon the node closes
the connection. Baseline: an earlier tree of the node (run this file with PYTHONPATH at that tree), e.g. one
without the bounded PDU reader.
Run: .venv/bin/python benchmarks/listener_bounds.py [--declared-mib 1024]
"""

from __future__ import annotations

import argparse
import socket
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

from dicom_node.receiver import Receiver
from miadmark.config import parse_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--declared-mib", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config("receiver:\n  bind: 127.0.0.1\n  port: 0\n  store: store/\n  quarantine: q/\n"
                           "  allow_calling: [GW]\n", base=Path(tmp))
        rx = Receiver(cfg).start()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", rx.port)) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, args.declared_mib << 20) + b"\0" * 1024)
            sock.settimeout(5.0)
            try:
                closed = "closed" if sock.recv(1) == b"" else "answered"
            except TimeoutError:
                closed = "still open after 5 s"
            except ConnectionResetError:
                closed = "reset"
        took = time.monotonic() - t0
        peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
        tracemalloc.stop()
        rx.stop()
    print(f"declared {args.declared_mib} MiB: peak extra allocation {peak:.1f} MiB; connection {closed} "
          f"after {took:.2f} s")


if __name__ == "__main__":
    main()
