"""A job that reports its progress: `python -m xinhe_runtime.examples.progress_demo`.

Each step does a little CPU work and then sleeps ``--step-seconds`` (or
``$DEMO_STEP_SECONDS``, which a job spec can set per family or model in its
variants, standing in for a chip that runs this model faster or slower).
After every step it calls ``xinhe_runtime.report_progress(step, steps/s)``;
the agent forwards the newest report and the control plane learns the job
type's speed on this chip. Runs for ``--seconds`` and prints one summary
line ``result {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import xinhe_runtime as rt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run")
    parser.add_argument("--step-seconds", type=float,
                        default=float(os.environ.get("DEMO_STEP_SECONDS", "0.1")),
                        help="sleep per step (default $DEMO_STEP_SECONDS or 0.1)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.step_seconds < 0:
        parser.error("--seconds must be positive and --step-seconds non-negative")
    started = time.monotonic()
    step, total = 0, 0.0
    while time.monotonic() - started < args.seconds:
        total += sum(i * i for i in range(2000)) % 7  # a little real work
        time.sleep(args.step_seconds)
        step += 1
        rt.report_progress(step, step / (time.monotonic() - started))
    elapsed = time.monotonic() - started
    print("result " + json.dumps({"steps": step, "seconds": round(elapsed, 3),
                                  "steps_per_second": round(step / elapsed, 3),
                                  "model": rt.accelerator_model()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
