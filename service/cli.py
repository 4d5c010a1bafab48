"""`python -m service.cli prepare`: build backbone artifacts ahead of serving.
`python -m service.cli sign-versions`: sign adapter versions written before signing existed."""
from __future__ import annotations

import argparse
import logging
import sys

from models import load_backbone
from models.catalog import UnknownBackboneError, resolve_spec
from service.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="export, optimise and quantise backbones into GRAFT_HOME")
    prep.add_argument("names", nargs="*", help="catalog ids or local model paths (default: GRAFT_BACKBONES)")
    sub.add_parser("sign-versions", help="sign the adapter versions written before signing existed "
                                         "(for a registry database you trust; once, after upgrading)")
    args = parser.parse_args()
    # The ONNX quantiser logs every tensor on the root logger at INFO; keep ours only.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("models", "service"):
        logging.getLogger(name).setLevel(logging.INFO)
    settings = Settings()
    if args.command == "sign-versions":
        from adapters.registry import Registry, default_url
        from service.auth import load_signing_key

        registry = Registry(settings.database_url or default_url(settings.home), signing_key=load_signing_key(settings))
        print(f"signed {registry.sign_unsigned()} adapter versions")
        registry.close()
        return
    names = args.names or settings.backbones
    try:
        for name in names:  # every name checked before anything is built: a typo fails at once
            resolve_spec(name)
        for name in names:
            load_backbone(name, settings.home, precision=settings.precision, provider=settings.provider)
    except UnknownBackboneError as e:  # one line, no traceback: what to use instead
        print(f"python -m service.cli prepare: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
