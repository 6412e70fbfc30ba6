"""Domain model shared by the control plane and the agents: pure data, no I/O
beyond reading the packaged catalogue."""
