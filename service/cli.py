"""`python -m service.cli prepare`: build backbone artifacts ahead of serving.
`python -m service.cli check-prepared`: exit 0 when every backbone was prepared for this
process's settings (what a GRAFT_PREPARED=required server checks before it starts), else 3
and what is missing (a pod's initContainer waits on it while the prepare Job runs).
`python -m service.cli sign-versions`: sign adapter versions written before signing existed."""
from __future__ import annotations

import argparse
import logging
import sys

from models import load_backbone
from models.catalog import CatalogError, UnknownBackboneError, check_unique_ids, resolve_spec
from models.families import UnsupportedFamilyError
from models.parity import ParityError


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="export, optimise and quantise backbones into GRAFT_HOME")
    prep.add_argument("names", nargs="*", help="catalog ids or local model paths (default: GRAFT_BACKBONES)")
    sub.add_parser("check-prepared", help="exit 0 when GRAFT_BACKBONES are prepared in GRAFT_ARTIFACTS for these "
                                          "settings, else 3 and what is missing (no torch needed)")
    sub.add_parser("sign-versions", help="sign the adapter versions written before signing existed "
                                         "(for a registry database you trust; once, after upgrading)")
    args = parser.parse_args()
    # The ONNX quantiser logs every tensor on the root logger at INFO; keep ours only.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("models", "service"):
        logging.getLogger(name).setLevel(logging.INFO)
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        settings = Settings()
    except ValidationError as e:  # a bad catalogue file or GRAFT_BACKBONES: what and where, no traceback
        print(f"python -m service.cli: {'; '.join(err['msg'].removeprefix('Value error, ') for err in e.errors())}",
              file=sys.stderr)
        sys.exit(2)
    if args.command == "sign-versions":
        from adapters.registry import Registry, default_url
        from service.auth import load_signing_key

        registry = Registry(settings.database_url or default_url(settings.home), signing_key=load_signing_key(settings))
        print(f"signed {registry.sign_unsigned()} adapter versions")
        registry.close()
        return
    if args.command == "check-prepared":
        from models.export import ArtifactMissingError
        from models.loader import check_prepared

        try:
            check_prepared(settings.backbones, settings.artifacts_home, split_layers=settings.split_layers,
                           image_split_blocks=settings.image_split_blocks)
        except (ArtifactMissingError, UnknownBackboneError, CatalogError) as e:
            print(f"python -m service.cli check-prepared: {e}", file=sys.stderr)
            sys.exit(3)
        print(f"prepared in {settings.artifacts_home}: {', '.join(settings.backbones)}")
        return
    names = args.names or settings.backbones
    home = settings.artifacts_home  # GRAFT_ARTIFACTS, else GRAFT_HOME
    try:
        check_unique_ids(names)
        for name in names:  # every name checked before anything is built: a typo fails at once
            resolve_spec(name)
        for name in names:
            # The split graphs too (GRAFT_SPLIT_LAYERS, or the entry's split_layers): all of
            # them pass the parity gate here, not at a serving pod's start.
            backbone = load_backbone(name, home, precision=settings.precision, provider=settings.provider,
                                     split_layers=settings.split_layers,
                                     image_split_blocks=settings.image_split_blocks)
            gate = backbone.parity or {}
            print(f"{backbone.id}: {backbone.kind}, {backbone.precision}, dim {backbone.dim}"
                  + "".join(f"; parity {g} {gate_figure(v)}" for g, v in gate.items())
                  + (f"; int8 gate: {backbone.int8['reason']}" if backbone.int8 else ""))
            print(f"{backbone.id}: prepared in {record(backbone, home)}")
    except (UnknownBackboneError, CatalogError, UnsupportedFamilyError, ParityError) as e:
        # One line, no traceback: what is wrong and what to do.
        print(f"python -m service.cli prepare: {e}", file=sys.stderr)
        sys.exit(2)


def gate_figure(v: dict) -> str:  # type: ignore[type-arg]
    """A /readyz parity summary in words: max abs diff (fp32) or min cosine (reduced precision)."""
    if "min_cosine" in v:
        return f"min cosine {v['min_cosine']:.6f} {'>=' if v['passed'] else '<'} {v['bar']}"
    return f"max abs diff {v['max_abs_diff']:.1e} {'<=' if v['passed'] else '>'} {v['bar']:.0e}"


def record(backbone, home):  # type: ignore[no-untyped-def]  # -> Path
    """What serving processes with GRAFT_PREPARED=required need beyond the graphs the load
    built: every int8 recipe's graphs (the CPU-independent part of the int8 gates), so a node
    of another kind of CPU gates itself with ONNX Runtime alone; the fp16 graph's parity verdict
    (a GPU node serves fp16 from these artifacts: a miss is kept too, and refuses there); then
    the record they find the artifacts by (models/export.py record_prepared)."""
    from models.export import ensure_artifact, record_prepared
    from models.int8 import RECIPES, ensure_int8, split_recipe
    from models.parity import check_reduced

    spec, split = backbone.spec, backbone.split  # split: text or image split graphs, or None
    if spec.kind == "text" or spec.hf_image:
        try:
            print(f"{backbone.id}: parity fp16 {check_reduced(spec, home, ensure_artifact(spec, 'fp16', home))['reason']}")
        except ParityError as e:  # CPU serving (int8, fp32) does not need it: said, not fatal
            print(f"{backbone.id}: {e} (a GPU node serving fp16 will refuse it)")
    if backbone.int8 is not None and not spec.hf_image:  # int8 asked for (image directories have no recipe)
        for name, recipe in RECIPES.items():
            if recipe["kind"] == spec.kind:
                ensure_int8(spec, name, home)
            elif recipe["kind"] == "split" and spec.kind == "text" and split is not None:
                split_recipe(spec, split.shape, home, name)
    top = (split.shape.layers - split.shape.split) if split is not None else 0
    return record_prepared(spec, home, prepared_with={
        "precision": backbone.precision, "split_layers" if spec.kind == "text" else "image_split_blocks": top})

if __name__ == "__main__":
    main()
