"""`minicpm-recipes list`: models, stages, methods, distributed set-ups (and LLaMA-Factory templates)."""

from __future__ import annotations

import argparse
import json

HELP = "list known models, stages, methods and distributed set-ups"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--templates", action="store_true", help="list the chat templates LLaMA-Factory accepts")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from ..catalog import load_catalog
    from ..lfspec import load_spec

    catalog = load_catalog()
    spec = load_spec()
    if args.templates:
        if args.json:
            print(json.dumps(sorted(spec.templates)))
        else:
            print(f"LLaMA-Factory {spec.version} chat templates:")
            print("  " + " ".join(sorted(spec.templates)))
        return 0
    if args.json:
        print(json.dumps({
            "models": [{"id": m.id, "aliases": list(m.aliases), "template": m.template,
                        "trust_remote_code": m.trust_remote_code, "flash_attn": m.flash_attn,
                        "lora_target": m.lora_target, "template_note": m.template_note} for m in catalog.models],
            "stages": {s.name: {"llamafactory_stage": s.llamafactory_stage, "aliases": list(s.aliases),
                                "description": s.description} for s in catalog.stages.values()},
            "methods": {m.name: m.description for m in catalog.methods.values()},
            "dist": {d.name: {"engine": d.engine, "description": d.description} for d in catalog.dists.values()},
        }, indent=2, ensure_ascii=False))
        return 0
    print("models:")
    width = max(len(m.id) for m in catalog.models)
    for m in catalog.models:
        template = m.template or "(none: see note)"
        extra = ", trust_remote_code" if m.trust_remote_code else ""
        extra += f", flash_attn={m.flash_attn}" if m.flash_attn != "auto" else ""
        print(f"  {m.id:<{width}}  template={template}{extra}  aliases: {', '.join(m.aliases)}")
        if m.template_note:
            print(f"  {'':<{width}}  note: {m.template_note}")
    print("  (a local folder or another hub id works with --template NAME)")
    print("stages:")
    for s in catalog.stages.values():
        alias = f" (alias {', '.join(s.aliases)})" if s.aliases else ""
        print(f"  {s.name:<9} {s.description}{alias}")
    print("methods:")
    for m in catalog.methods.values():
        print(f"  {m.name:<9} {m.description}")
    print("dist:")
    for d in catalog.dists.values():
        print(f"  {d.name:<14} {d.description} [{d.engine}]")
    return 0
