"""`python -m service.cli prepare`: build backbone artifacts ahead of serving.
`python -m service.cli sign-versions`: sign adapter versions written before signing existed."""
from __future__ import annotations

import argparse
import logging

from models import load_backbone
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
    for name in args.names or settings.backbones:
        load_backbone(name, settings.home, precision=settings.precision, provider=settings.provider)


if __name__ == "__main__":
    main()
