"""ddbench entry point: `python benchmark.py --suite fashion-mnist` (see README.md)."""

import sys

from harness.flags import precheck

if __name__ == "__main__":
    # The flags and the suite's text first, before the heavy imports below (torch, Ray, diffusers: 10-30 s on a
    # busy machine): a typo or a missing suite is one line and exit status 2 in well under two seconds.
    args = precheck(sys.argv[1:])
    if sys.argv[1:2] == ["fetch-set"]:  # needs no suite, model or cluster: no heavy import either
        from harness.config.released import ReleasedError
        from harness.flags import fail
        from harness.runtime.released_sets import fetch_set

        try:
            sys.exit(fetch_set(args))
        except ReleasedError as e:
            fail(str(e))
        except KeyboardInterrupt:  # as harness/cli.py's main says it
            print(
                "ddbench: interrupted (Ctrl-C); what is finished is kept, and the same command resumes from it",
                file=sys.stderr,
            )
            sys.exit(130)

from harness.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
