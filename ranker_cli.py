"""The ``ranker`` command's entry point: ``serve`` and ``join-logs`` go to the service, the
rest to training.

It is the one module that knows both sides, so that neither imports the other: ``ranker
serve`` runs from an install of the ``serve`` extra (no torch, no training code imported),
and every other subcommand is ``training.cli``'s.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["serve"], ["join-logs"]):
        from service.cli import main as serve_main

        return serve_main(args)
    from training.cli import main as training_main

    return training_main(args)


if __name__ == "__main__":
    sys.exit(main())
