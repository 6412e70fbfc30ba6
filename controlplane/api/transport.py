"""gRPC server transport settings shared by the control plane's listener
and its API front ends."""

from __future__ import annotations

# Ping idle agent streams so a vanished agent is noticed, and accept the
# agents' own keepalive pings (every 20 s) instead of closing their streams.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)
