"""A checkpointed, resumable training loop: ``python -m xinhe_runtime.examples.checkpointed_train``.

It runs unchanged on every family (it asks the runtime helper for
everything) and shows the checkpoint protocol a migratable job follows:

* on start, resume from :func:`xinhe_runtime.resume_path` if there is one;
* every ``--every`` steps, and whenever :func:`xinhe_runtime.should_checkpoint`
  says the agent asked (SIGUSR1 or the request file), save the full state
  with :func:`xinhe_runtime.save_checkpoint` (atomic, then marked as LATEST);
  after a requested one, call :func:`xinhe_runtime.checkpoint_done`;
* report progress with :func:`xinhe_runtime.report_progress`.

The state is the step and the parameters, saved as JSON (floats round-trip
exactly), and each step depends only on that state, so the final result is
bit-for-bit the same whether the run goes straight through or is stopped
and resumed any number of times. Only rank 0 writes checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import xinhe_runtime as rt

Data = list[tuple[float, float]]


def dataset(seed: int = 0) -> Data:
    """y = 3x + 1 with deterministic pseudo-noise (the same as the train example)."""
    xs = [((i * 7919 + seed * 104729) % 1000) / 1000.0 for i in range(256)]
    return [(x, 3.0 * x + 1.0 + (((i * 31337) % 200) - 100) / 1000.0) for i, x in enumerate(xs)]


def train_step(state: dict, data: Data, lr: float = 0.05) -> dict:
    """One step of gradient descent; a pure function of ``state``."""
    w, b = state["w"], state["b"]
    gw = sum((w * x + b - y) * x for x, y in data) / len(data)
    gb = sum((w * x + b - y) for x, y in data) / len(data)
    return {"step": state["step"] + 1, "w": w - lr * gw, "b": b - lr * gb}


def loss(state: dict, data: Data) -> float:
    return sum((state["w"] * x + state["b"] - y) ** 2 for x, y in data) / len(data)


def load(path: str | None) -> dict:
    """The state in checkpoint ``path``, or the initial state when there is none."""
    if path is None:
        return {"step": 0, "w": 0.0, "b": 0.0}
    state = json.loads(Path(path).read_text(encoding="utf-8"))
    return {"step": int(state["step"]), "w": float(state["w"]), "b": float(state["b"])}


def save(state: dict, keep: int) -> str:
    """Write ``state`` as ``step-<n>.json`` through the crash-safe helper; prune old ones."""
    path = rt.save_checkpoint(lambda staging: Path(staging).write_text(json.dumps(state)),
                              name=f"step-{state['step']:09d}.json")
    for old in sorted(Path(path).parent.glob("step-*.json"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def run(steps: int, every: int, keep: int, step_sleep: float) -> dict:
    """Train to ``steps`` from wherever the last checkpoint left off."""
    data = dataset()
    writer = rt.checkpoint_dir() is not None and rt.rank() == 0
    state = load(rt.resume_path())
    resumed_from = state["step"]
    started = time.monotonic()
    while state["step"] < steps:
        state = train_step(state, data)
        requested = rt.should_checkpoint()
        if writer and (requested or state["step"] % every == 0):
            save(state, keep)
            if requested:
                print(f"checkpoint at step {state['step']} (requested)", flush=True)
                rt.checkpoint_done()  # last: the agent may stop the job right after
        if state["step"] % 10 == 0 or state["step"] == steps:
            done = state["step"] - resumed_from
            rt.report_progress(state["step"], done / max(time.monotonic() - started, 1e-9))
        if step_sleep:
            time.sleep(step_sleep)
    return {"steps": state["step"], "resumed_from": resumed_from,
            "w": state["w"], "b": state["b"], "loss": loss(state, data)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="total steps to train")
    parser.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    parser.add_argument("--keep", type=int, default=2, help="checkpoints to keep")
    parser.add_argument("--step-sleep", type=float, default=0.0,
                        help="seconds to sleep per step (stands in for accelerator time)")
    args = parser.parse_args(argv)
    if args.steps < 0 or args.every < 1 or args.keep < 1:
        parser.error("--steps must be >= 0, --every and --keep >= 1")
    print(f"training on {rt.accelerator_family()} {rt.accelerator_model()} "
          f"device={rt.device()} checkpoints={rt.checkpoint_dir()}", flush=True)
    result = run(args.steps, args.every, args.keep, args.step_sleep)
    print("result " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
