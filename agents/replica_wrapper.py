"""Run a replica's command and leave its exit status in a file.

Usage: ``python -I -S replica_wrapper.py EXIT_FILE COMMAND [ARG...]``

The launcher starts every replica through this wrapper, the leader of the
replica's process group. An agent that restarts while the replica runs is
not its parent and cannot wait for it; the file tells it how the command
ended: ``exit N`` or ``signal N``, written atomically (temp file + rename),
so a missing file means the status is unknown (the wrapper itself was
killed) and never passes for success.

Signals sent to the group (SIGTERM on stop, SIGUSR1 to checkpoint) reach the
command directly; the wrapper catches them with a no-op handler (a caught
signal is reset to its default in the exec'd command, an ignored one would
not be), so it outlives the command and records its end. The wrapper exits
as the command did (re-raising a fatal signal), so a parent that waits sees
the command's own status.

Launch gate: the wrapper starts the command only after reading the byte
``GO`` from its stdin, a pipe from the agent, which writes it once the
replica is in the restart journal. An agent killed between spawning the
wrapper and journalling it closes the pipe by dying; the wrapper then reads
end-of-file and exits without running anything (and without an exit file),
so no replica ever runs that a restarted agent could not find. The command
itself gets ``/dev/null`` as stdin.

Standard library only and started with ``-I -S``: the job's environment
(PYTHONPATH, a broken site-packages) cannot affect it.
"""

import os
import signal
import sys

GO = b"1"  # the agent's release (see the launch gate above)
NOT_RELEASED = 125  # exit code when the agent went away before the release
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGQUIT)


def _write_status(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        out.write(text + "\n")
    os.replace(tmp, path)


def _released() -> bool:
    """Wait for the agent's release on stdin; then stdin becomes /dev/null."""
    try:
        go = os.read(0, 1)
    except OSError:
        go = b""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return go == GO


def main(argv: list[str]) -> int:
    exit_file, command = argv[0], argv[1:]
    for sig in FORWARDED:
        signal.signal(sig, lambda *_: None)
    if not _released():
        sys.stderr.write("xinhe: the agent went away before releasing the replica; "
                         "not started\n")
        return NOT_RELEASED
    try:
        pid = os.posix_spawnp(command[0], command, dict(os.environ))
    except OSError as err:
        sys.stderr.write(f"xinhe: could not start {command[0]!r}: {err}\n")
        _write_status(exit_file, "exit 127")
        return 127
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        _write_status(exit_file, f"signal {sig}")
        if sig in FORWARDED:  # caught here: back to the default, fatal action
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig  # the signal was not fatal to the wrapper after all
    code = os.waitstatus_to_exitcode(status)
    _write_status(exit_file, f"exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
