"""`rnnsgd train | sweep | status | analyze | report`: bad input exits with status 2 and one line naming it."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A user error: printed as one line, exit status 2, nothing written."""


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """['model.m=256', ...] -> {'model.m': '256'}; values stay strings for the config to coerce."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--set {pair!r}: expected key=value, e.g. --set model.m=256")
        out[key.strip()] = value.strip()
    return out


def load_yaml(path: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise BadInput(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def cmd_train(args: argparse.Namespace) -> int:
    from rnnsgd.config import TrialConfig
    from rnnsgd.train import train

    flat: dict[str, Any] = {}
    if args.config:
        loaded = load_yaml(args.config)
        if not isinstance(loaded, dict):
            raise BadInput(f"{args.config}: expected a mapping of dotted keys, e.g. 'model.m: 256'")
        flat.update(loaded)
    flat.update(parse_sets(args.set))
    try:
        cfg = TrialConfig.from_flat(flat)
    except ValueError as e:
        raise BadInput(str(e)) from None

    def show(metrics: dict[str, float], _trainer: Any) -> None:
        if args.quiet:
            return
        keys = ("train/risk", "test/risk", "test/nrisk", "w/move_fro", "act/flip_frac")
        cells = "  ".join(f"{k} {metrics[k]:8.4f}" for k in keys if k in metrics)
        print(f"step {int(metrics['step']):>8}  {cells}", file=sys.stderr if args.json else sys.stdout, flush=True)

    result = train(cfg, show)
    final = {"outcome": result.status, **result.metrics}
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in final.items()}))
    else:
        print(f"outcome: {result.status}")
        for k, v in result.metrics.items():
            print(f"  {k:<22} {v:.6g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnsgd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one model and print its final metrics")
    p.add_argument("--config", help="YAML file of dotted keys (model.m: 256, ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BadInput as e:
        print(f"rnnsgd {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
