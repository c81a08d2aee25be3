"""``mechscope models``: which models can be loaded here, and how to install the others."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("models", help="list the embedded models (installed or not) and cached TransformerLens models",
                       description="List the models mechscope can load and whether their weights are installed.")
    p.set_defaults(func=run)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cached_transformer_lens_models() -> list[str]:
    """TransformerLens official model names found in the local Hugging Face cache."""
    try:
        from huggingface_hub import scan_cache_dir

        repos = {r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model"}
    except Exception:  # no cache folder yet, or an unreadable one: nothing cached
        return []
    if not repos:
        return []
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    return sorted(set(OFFICIAL_MODEL_NAMES) & repos)


def run(args: argparse.Namespace) -> int:
    from mechscope.probes.models import DEFAULT_MODEL, available_models

    rows = [["name", "installed", "licence", "source", "install"]]
    for spec, installed in available_models():
        name = spec.name + (" (default)" if spec.name == DEFAULT_MODEL else "")
        rows.append([name, "yes" if installed else "no", spec.licence, spec.source, "" if installed else spec.install_hint])
    print(_table(rows))
    print()
    cached = cached_transformer_lens_models()
    print("Any TransformerLens model name (e.g. gpt2) also works if it is in the local Hugging Face cache "
          "(this machine reaches no hub).")
    print("Cached TransformerLens models: " + (", ".join(cached) if cached else "none found."))
    return 0
