"""The one error type of simulator inputs, so the CLI can print it plainly."""

from __future__ import annotations


class SimInputError(ValueError):
    """A fleet or trace file (or generator argument) is not usable.

    The message names the file and line when there is one, e.g.
    ``trace.csv:7: unknown accelerator model 'H1000'``.
    """
