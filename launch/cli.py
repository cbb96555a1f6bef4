"""What the launchers share on the command line: absl's flag parsing with a bad value reported
like every other bad flag, as one `error:` line and exit status 2."""

from __future__ import annotations

import sys

from absl import flags


def parse_flags(argv):
    """``app.run(main, flags_parser=parse_flags)``: absl's parsing, but ``--epochs=abc``,
    ``--resume=maybe`` or an unknown flag print one `error:` line and exit with status 2
    (absl's own handling prints a usage block and exits with 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
