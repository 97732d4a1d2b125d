"""`m3`: the project's command-line utilities.

m3 tiny --out DIR [--preset tiny|small] [--seed N]   write a tiny Qwen3-MoE checkpoint
m3 base [hydra overrides]                             register the base model (make base)
m3 registry resolve models:/m3-base@candidate         print the local path of a model
m3 registry ls [--json]                               models, versions, aliases, lineage
"""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_tiny(args: argparse.Namespace) -> int:
    from m3.model.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(args.out, args.preset, args.seed)
    print(out)
    return 0


def _cmd_base(args: argparse.Namespace) -> int:
    from m3.config import compose
    from m3.model import base

    base.main(compose("base", args.overrides))
    return 0


def _cmd_resolve(args: argparse.Namespace) -> int:
    from m3 import registry

    print(registry.resolve(args.uri))
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    from m3 import registry

    models = registry.list_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print(f"no registered models in {registry.tracking_uri()} (run `make base` or `make demo`)")
    for m in models:
        print(m["name"])
        for v in m["versions"]:
            alias = f" @{','.join(v['aliases'])}" if v["aliases"] else ""
            parents = ", ".join(v["parents"]) or "-"
            print(
                f"  v{v['version']}{alias}  stage={v['stage']} config={v['config_hash']} "
                f"storage={v['storage']} commit={v['git_commit'][:12]} parents: {parents}"
            )
    return 0


def _cmd_facts_serve(args: argparse.Namespace) -> int:
    from m3.facts.service import serve

    serve(args.host, args.port, args.config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="m3", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tiny", help="write a tiny Qwen3-MoE checkpoint with the Qwen3 tokenizer")
    t.add_argument("--out", required=True)
    t.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=_cmd_tiny)

    b = sub.add_parser("base", help="register the base model as m3-base@candidate")
    b.add_argument("overrides", nargs="*", help="hydra overrides, e.g. model=small_qwen3_moe")
    b.set_defaults(fn=_cmd_base)

    r = sub.add_parser("registry", help="resolve and list registered models")
    rsub = r.add_subparsers(dest="registry_command", required=True)
    res = rsub.add_parser("resolve", help="print the local directory of a model URI")
    res.add_argument("uri")
    res.set_defaults(fn=_cmd_resolve)
    ls = rsub.add_parser("ls", help="list models, versions, aliases and lineage")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=_cmd_ls)

    f = sub.add_parser("facts", help="the Fact-Aware reward service")
    fsub = f.add_subparsers(dest="facts_command", required=True)
    fs = fsub.add_parser("serve", help="serve /score and /verify over HTTP (127.0.0.1 by default)")
    fs.add_argument("--host", default="127.0.0.1")
    fs.add_argument("--port", type=int, default=8081)
    fs.add_argument("--config", default=None, help="YAML of FactRewardConfig fields")
    fs.set_defaults(fn=_cmd_facts_serve)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from m3.registry import RegistryError

    try:
        return args.fn(args)
    except (RegistryError, ValueError, HydraException, OmegaConfBaseException) as e:
        print(f"m3: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
