"""Sample portable jobs: run unchanged on every accelerator family."""
