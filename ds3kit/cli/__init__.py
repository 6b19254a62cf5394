"""The ``ds3kit`` command. Each subcommand lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

from ds3kit.errors import InputError

# name -> module under ds3kit.cli; each defines add_parser(subparsers) and run(args) -> int.
_SUBCOMMANDS = ("phantom", "preprocess", "synthesize", "evaluate", "kernels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ds3kit", description="Semi-supervised multimodal MRI synthesis toolkit.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(f"ds3kit.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"ds3kit.cli.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (InputError, ValueError, FileNotFoundError) as error:
        print(f"ds3kit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ds3kit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
