"""The ``ranker`` command's entry point: ``serve`` and ``join-logs`` go to the service, the
rest to training.

It is the one module that knows both sides, so that neither imports the other: ``ranker
serve`` runs from an install of the ``serve`` extra (no torch, no training code imported),
and every other subcommand is ``training.cli``'s.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: Top-level modules of the train extra (pyproject.toml), whose absence means "not installed".
TRAIN_EXTRA_MODULES = frozenset({"torch", "pandas", "tqdm", "matplotlib", "onnx", "onnxscript"})


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["serve"], ["join-logs"]):
        from service.cli import main as serve_main

        return serve_main(args)
    try:
        from training.cli import main as training_main

        return training_main(args)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        # An install of the serve extra alone: say which extra, not a traceback.
        print(f"ranker: error: `ranker {args[0] if args else '--help'}` needs the train extra "
              f"(no module {e.name!r}): pip install -e '.[train]' (the serve extra runs "
              "`ranker serve` and `ranker join-logs` only)", file=sys.stderr)  # fmt: skip
        return 2


if __name__ == "__main__":
    sys.exit(main())
