"""``dino train``: one flag per field of :class:`dino.config.TrainConfig`, so names, types
and defaults are those of the config (and of the reference ``main_dino.py``)."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable
from typing import Any

from dino.coerce import parse_bool
from dino.config import (
    TrainConfig,
    build_config,
    coerce,
    field_help,
    field_names,
    field_type,
    load_yaml,
)
from dino.errors import ConfigError


def add(sub: Any) -> None:
    """The ``train`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser(
        "train",
        help="pretrain a backbone with DINO (no data argument: the demo)",
        description="Pretrain with DINO. Flags follow the reference main_dino.py.",
    )
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    config = config_from_args(args)  # before importing torch: a wrong option answers at once
    from dino.training.trainer import train

    summary = train(config)
    if summary.images_per_s is not None:
        print(
            f"done: {summary.epochs_run} epoch(s) at {summary.images_per_s:.1f} img/s; "
            f"checkpoints and log.txt in {summary.output_dir}"
        )


def _converter(name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return coerce(name, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None

    convert.__name__ = name
    return convert


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--name`` flag per config field; absent flags stay absent (no default injected)."""
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=argparse.SUPPRESS,
        help="YAML file of option values; flags given here override it",
    )
    for name in field_names():
        tp = field_type(name)
        default = TrainConfig.__dataclass_fields__[name].default
        kwargs: dict[str, Any] = {
            "default": argparse.SUPPRESS,
            "help": f"{field_help(name)} (default: {default})",
        }
        if typing.get_origin(tp) is tuple:
            inner = _converter_scalar(float)
            kwargs.update(nargs=len(typing.get_args(tp)), type=inner, metavar=("MIN", "MAX"))
        elif tp is bool:
            kwargs.update(nargs="?", const="true", type=_converter(name), metavar="BOOL")
        else:
            metavar = {int: "INT", float: "FLOAT"}.get(tp, "VALUE")
            kwargs.update(type=_converter(name), metavar=metavar)
        parser.add_argument(f"--{name}", **kwargs)
    parser.add_argument(
        "--use_fp16",
        nargs="?",
        const="true",
        default=argparse.SUPPRESS,
        type=_bool_flag,
        metavar="BOOL",
        help="reference flag: true means --precision fp16, false --precision fp32",
    )


def _bool_flag(text: str) -> bool:
    try:
        return parse_bool("use_fp16", text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None


def _converter_scalar(tp: type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None

    return convert


def config_from_args(args: argparse.Namespace) -> Any:
    """Defaults < demo preset < YAML (``--config``) < flags; returns a validated TrainConfig."""
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    if "use_fp16" in flags:
        flags.setdefault("precision", "fp16" if flags.pop("use_fp16") else "fp32")
        flags.pop("use_fp16", None)
    values: dict[str, Any] = {}
    if "config" in args:
        values.update(load_yaml(args.config))
        source = f"{args.config}: "
        build_config(values, source)  # report YAML errors against the file
    values.update(flags)
    return build_config(values)
