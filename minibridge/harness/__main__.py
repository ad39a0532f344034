"""`python -m minibridge.harness [lm_eval arguments]`: lm_eval's command line with `--model minibridge`.

    python -m minibridge.harness --model minibridge --model_args pretrained=HF_DIR --tasks arc_easy --batch_size 8
    python -m minibridge.harness ls tasks          # every lm_eval subcommand works as with `lm_eval`

The model is registered, then lm_eval's own entry point (`lm_eval.__main__.cli_evaluate`) runs with these
arguments, so every lm_eval flag means what lm_eval's documentation says. A bad model argument (a missing
folder, an unknown key) ends the run with one line and exit code 2, as minibridge's other commands do.
"""

from __future__ import annotations

import sys

from ..cli import run_main
from ..errors import ConfigError
from .model import INSTALL_HINT

USAGE = __doc__.split("\n\n")[1]


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        import lm_eval.__main__ as lm_eval_cli
    except ImportError:
        if not argv or argv[0] in ("-h", "--help"):
            print(f"usage:\n{USAGE}\n\n{INSTALL_HINT}")
            return 0
        raise ConfigError(INSTALL_HINT) from None
    from . import register

    register()
    saved = sys.argv
    sys.argv = ["python -m minibridge.harness", *argv]  # lm_eval's parser reads sys.argv
    try:
        lm_eval_cli.cli_evaluate()
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("minibridge.harness", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
