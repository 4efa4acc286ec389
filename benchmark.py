"""ddbench entry point: `python benchmark.py --suite fashion-mnist`, and the `ddbench` command (see README.md).

It sits outside the packages on purpose: the flags and the suite's text are checked first, and only then are the
heavy modules imported (torch, Ray, diffusers: 10-30 s on a busy machine), so a typo or a missing suite is one line
and exit status 2 in well under two seconds, from either way in."""

import os
import sys

from harness.flags import fail, precheck

INTERRUPTED = "ddbench: interrupted (Ctrl-C); what is finished is kept, and the same command resumes from it"
# The statuses harness/cli.py ends a signalled run with (128 + SIGHUP, SIGINT, SIGTERM).
SIGNALLED = (129, 130, 143)


def _end_now(status: int) -> None:
    """A signalled run's last step: its line is printed and what it finished is on disk, so the interpreter's own
    teardown (2-3 s of native clean-up after Ray's) is skipped. The local Ray cluster is stopped first, as atexit
    would have: no raylet or GCS outlives the command."""
    ray = sys.modules.get("ray")  # imported by the run, never here
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def console() -> int:
    args = precheck(sys.argv[1:])
    if sys.argv[1:2] == ["fetch-set"]:  # needs no suite, model or cluster: no heavy import either
        from harness.config.released import ReleasedError
        from harness.runtime.released_sets import fetch_set

        try:
            return fetch_set(args)
        except ReleasedError as e:
            fail(str(e))
        except KeyboardInterrupt:  # as harness/cli.py's main says it
            print(INTERRUPTED, file=sys.stderr)
            return 130
    try:  # the heavy imports: a Ctrl-C here is the same one line as one during the run
        from harness.cli import main
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    try:
        return main()
    except SystemExit as e:
        if e.code in SIGNALLED:
            _end_now(e.code)
        raise


if __name__ == "__main__":
    sys.exit(console())
