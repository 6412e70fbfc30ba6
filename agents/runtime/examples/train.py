"""A portable training-style job: `python -m xinhe_runtime.examples.train`.

It never names a vendor: it asks the runtime helper which device and backend
it was given, does a little real CPU work (gradient descent on a synthetic
least-squares problem, deterministic), and for a gang sums the replicas'
results through a TCP rendezvous at the master address and port Xinhe gave
it, so every replica checks it agrees with the others on rank, world size
and rendezvous point.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

import xinhe_runtime as rt


def fit(steps: int, seed: int, step_sleep: float) -> float:
    """Gradient descent on y = 3x + 1 with deterministic pseudo-noise."""
    xs = [((i * 7919 + seed * 104729) % 1000) / 1000.0 for i in range(256)]
    ys = [3.0 * x + 1.0 + (((i * 31337) % 200) - 100) / 1000.0 for i, x in enumerate(xs)]
    w = b = 0.0
    lr = 0.5
    for _ in range(steps):
        gw = sum((w * x + b - y) * x for x, y in zip(xs, ys, strict=True)) / len(xs)
        gb = sum((w * x + b - y) for x, y in zip(xs, ys, strict=True)) / len(xs)
        w, b = w - lr * gw, b - lr * gb
        if step_sleep:
            time.sleep(step_sleep)
    return sum((w * x + b - y) ** 2 for x, y in zip(xs, ys, strict=True)) / len(xs)


def allreduce_sum(value: float, timeout: float = 60.0) -> float:
    """Sum ``value`` over the gang through rank 0 (a tiny TCP all-reduce)."""
    world, rank = rt.world_size(), rt.rank()
    if world == 1:
        return value
    addr, port = rt.master_addr(), rt.master_port()
    if rank == 0:
        return _serve_sum(value, world, port, timeout)
    return _send_value(value, addr, port, timeout)


def _serve_sum(value: float, world: int, port: int, timeout: float) -> float:
    with socket.create_server(("", port), reuse_port=False) as server:
        server.settimeout(timeout)
        peers, total = [], value
        while len(peers) < world - 1:
            conn, _ = server.accept()
            peer_rank, peer_world, peer_value = conn.makefile().readline().split()
            if int(peer_world) != world:
                raise SystemExit(f"rank {peer_rank} thinks world size is {peer_world}")
            peers.append(conn)
            total += float(peer_value)
        for conn in peers:
            conn.sendall(f"{total!r}\n".encode())
            conn.close()
        return total


def _send_value(value: float, addr: str, port: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((addr, port), timeout=5) as conn:
                conn.sendall(f"{rt.rank()} {rt.world_size()} {value!r}\n".encode())
                return float(conn.makefile().readline())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--step-sleep", type=float, default=0.0,
                        help="seconds to sleep per step (stands in for accelerator time)")
    parser.add_argument("--fail", action="store_true", help="exit 3 at the end (tests)")
    args = parser.parse_args(argv)
    info = rt.summary()
    print(f"xinhe job {info['job_id']} rank {info['rank']}/{info['world_size']} on "
          f"{info['accelerator_family']} {info['accelerator_model']} "
          f"device={info['device']} backend={info['dist_backend']} "
          f"visible={info['visible_devices']}", flush=True)
    loss = fit(args.steps, seed=rt.rank(), step_sleep=args.step_sleep)
    total = allreduce_sum(loss)
    print("result " + json.dumps({"rank": rt.rank(), "world_size": rt.world_size(),
                                  "loss": round(loss, 9), "gang_loss_sum": round(total, 9),
                                  "master": f"{rt.master_addr()}:{rt.master_port()}"}),
          flush=True)
    return 3 if args.fail else 0


if __name__ == "__main__":
    sys.exit(main())
