"""The ``dino`` command: ``dino train`` and the evaluation subcommands, one module each
(its parser beside the code it runs). Parsers import no torch, so ``dino --help`` is quick;
a command imports what it needs when it runs. Every user error ends in one line on stderr
and exit code 2 (1 for a fault met while working, such as a full disk; see dino.errors).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from typing import NoReturn

from dino.cli import (
    attention,
    copydetect,
    crops,
    demo_data,
    embed,
    export,
    knn,
    linear,
    pca,
    plot,
    retrieve,
    train,
    video_segment,
)
from dino.cli.flags import yaml_flags
from dino.cli.train import config_from_args
from dino.errors import DinoError, StoppedBySignal

COMMANDS = (
    train,
    knn,
    linear,
    embed,
    retrieve,
    copydetect,
    attention,
    video_segment,
    export,
    plot,
    crops,
    pca,
    demo_data,
)


class UsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit, so errors stay on one line."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> Parser:
    parser = Parser(prog="dino", description="DINO self-supervised pretraining and evaluation")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add(sub)
    return parser


def parse_with_config(parser: Parser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; an evaluation command's ``--config FILE.yaml`` supplies options that
    the flags on the command line override (``dino train`` reads its own ``--config``)."""
    config = _flag_value(argv, "--config")
    if not argv or argv[0] == "train" or config is None:
        return parser.parse_args(argv)
    try:
        return parser.parse_args([argv[0], *yaml_flags(config), *argv[1:]])
    except UsageError as e:
        raise UsageError(f"--config {config}: {e}") from None


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``), if any."""
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(f"{flag}="):
            return token.split("=", 1)[1]
    return None


def _who() -> str:
    """``dino``, or ``dino (rank N)`` when several processes could print the same line."""
    if "torch" not in sys.modules:  # nothing ran: one process
        return "dino"
    from dino.distributed import get_rank, is_distributed

    return f"dino (rank {get_rank()})" if is_distributed() else "dino"


def one_line(message: str) -> str:
    """``message`` on one line: line breaks (from a file name, say) written as escapes."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in message)


def _message(error: Exception) -> str:
    """The message of ``error``. One raised in a data-loader worker reaches the main process
    re-raised by torch with the worker's traceback as its text; its last line holds the
    original message."""
    text = str(error)
    last = text.rstrip().rsplit("\n", 1)[-1]
    prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
    return last.removeprefix(prefix) if "\n" in text and last.startswith(prefix) else text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if isinstance(sys.stdout, io.TextIOWrapper):  # file names that are not UTF-8 print escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        args = parse_with_config(parser, list(sys.argv[1:] if argv is None else argv))
        args.func(args)
        if "torch" in sys.modules:
            from dino.distributed import shutdown

            shutdown()
    except (UsageError, DinoError) as e:
        print(f"{_who()}: error: {one_line(_message(e))}", file=sys.stderr)
        return e.exit_code if isinstance(e, DinoError) else 2
    except StoppedBySignal as e:
        print(f"{_who()}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("dino: interrupted", file=sys.stderr)
        return 130
    return 0


__all__ = ["build_parser", "config_from_args", "main"]
