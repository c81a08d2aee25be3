"""Write the wave-4 GPU results (saved Result folders from ``benchmarks/gpu_wave4.sh``) into
benchmarks/RESULTS.md: sink metric and hidden sinks by class, ACT reference protocol, the
neuron taxonomy with n-gram detectors, contextualisation, and the GPU playground table.

Run: ``python -m benchmarks.report_gpu_wave4 DIR [WHERE]`` (DIR = the fetched $OUT; WHERE names
the machine, default "the lent GPU")."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from benchmarks.common import markdown_table

RESULTS = Path(__file__).with_name("RESULTS.md")


def replace_block(text: str, heading: str, body: str) -> str:
    """Replace the block that starts at ``heading`` and runs to the next heading (or a
    'Reading:' paragraph); append it at the end when absent."""
    lines = text.split("\n")
    try:
        start = lines.index(heading)
    except ValueError:
        return text.rstrip("\n") + "\n\n" + heading + "\n\n" + body.strip("\n") + "\n"
    end = start + 1
    while end < len(lines) and not re.match(r"^(#{2,3} |Reading:)", lines[end]):
        end += 1
    return "\n".join(lines[:start] + [heading, "", body.strip("\n"), ""] + lines[end:])


def taxonomy(res, seconds: str) -> str:
    counts = res.counts()
    tot = counts.drop(columns=["layer"]).sum()
    per_layer = ", ".join(f"L{r['layer']}: {r['dead']}/{r['token detector']}/{r['n-gram detector']}/{r['positional']}"
                          for r in counts.to_dict("records"))
    det = res.neurons("token detector").sort_values("fire_rate", ascending=False).head(8)
    def toks(layer, neuron):
        ids = res.top_token_ids[res.layers.index(layer), neuron]
        return ", ".join(repr(str(res.vocab[int(i)])) for i in ids if i >= 0).replace("|", "\\|")

    drows = [(f"L{r.layer}N{r.neuron}", f"{r.fire_rate:.4f}", toks(r.layer, r.neuron), f"{r.top_token_share:.2f}")
             for r in det.itertuples()]
    ng = res.neurons("n-gram detector").sort_values("fire_rate", ascending=False).head(8)
    rows = [(f"L{r.layer}N{r.neuron}", f"{r.fire_rate:.4f}", str(r.top_bigrams).replace("|", "\\|").replace("\n", "\\n"),
             f"{r.bigram_share:.2f}", f"{r.bigram_coverage:.2f}", f"{r.unigram_coverage:.2f}") for r in ng.itertuples()]
    return "\n".join([
        f"`neuron_activity` over the first {res.params.max_texts} texts of the `mixed` set ({res.n_tokens:,} tokens; "
        f"{seconds}), default thresholds (fires when |activation| > {res.params.threshold} — SiLU(gate)·up is signed; "
        "token detector: ≥ 5 firings, ≥ 80% of them on ≤ 3 token types, firing on ≥ 50% of the top type's occurrences; "
        "n-gram (bigram) detector: the same rules over (previous, current) token pairs, and firing on < 50% of the top "
        "pair's current token alone; positional: η²(position) ≥ 0.5 and ≥ 2 × η²(token)). Of "
        f"{int(tot.sum()):,} neurons: **{int(tot['dead'])} dead, {int(tot['token detector'])} token detectors, "
        f"{int(tot['n-gram detector'])} n-gram detectors, {int(tot['positional'])} positional**. "
        f"Per layer (dead/token/n-gram/positional): {per_layer}.", "",
        "Most frequently firing token detectors:", "",
        markdown_table(["neuron", "fire rate", "top tokens", "share of firings"], drows) if drows else "(none)", "",
        "Most frequently firing n-gram detectors:", "",
        markdown_table(["neuron", "fire rate", "top pairs", "share of firings", "pair coverage", "current-token coverage"], rows)
        if rows else "(none)",
    ])


def contextualisation(res) -> str:
    p = res.params
    d = res.by_distance()
    c = res.to_frame()
    return "\n".join([
        f"`contextualisation` on smollm2-135m (GPU): {p.texts} texts cut to {p.max_tokens_per_text} tokens, "
        f"{int((1 - p.eval_fraction) * 100)}% of the texts for training the adapter (≤ {p.max_train} positions, "
        f"{p.steps} Adam steps, lr {p.lr}, batch {p.batch_size}), {len(res.tokens)} held-out tokens scored; "
        f"k = {p.prefix} prefix tokens reconstructed from one token's states at every layer. "
        f"Final training loss {res.train_curve[-1]:.3f} nats.", "",
        markdown_table(["distance back", "loss (nats)", "control (no state)", "gain"],
                       [(int(r.distance), f"{r.loss:.3f}", f"{r.control:.3f}", f"{r.gain:+.3f}") for r in d.itertuples()]),
        "", "By token class (mean over the k slots; lower loss = more context stored):", "",
        markdown_table(["class", "tokens", "loss", "gain"],
                       [(r.token_class, int(r.count), f"{r.loss:.3f}", f"{r.gain:+.3f}") for r in c.itertuples()]),
    ])


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from analyses.catalog import load_result
    from benchmarks.bench_sinks import act_section, sinks_section

    args = argv or sys.argv[1:]
    src = Path(args[0])
    where = args[1] if len(args) > 1 else "the lent GPU"
    text = RESULTS.read_text()
    if (src / "sinks96" / "result.json").is_file():
        parts = sinks_section(load_result(src / "sinks96"))
        head = parts[0]
        text = replace_block(text, head, "\n".join(parts[2:]) + f"\n(Measured on {where}, float32.)")
    if (src / "act_ref" / "result.json").is_file():
        parts = act_section(load_result(src / "act_ref"))
        text = replace_block(text, parts[0], "\n".join(parts[2:]) + f"\n(Measured on {where}, float32.)")
    if (src / "activity" / "result.json").is_file():
        secs = (src / "activity.seconds").read_text().strip() if (src / "activity.seconds").is_file() else "GPU"
        text = replace_block(text, "### Neuron taxonomy (Voita et al.) on smollm2-135m", taxonomy(load_result(src / "activity"), secs))
    if (src / "ctx" / "result.json").is_file():
        text = replace_block(text, "## LLM-Microscope contextualisation (issue 12 item 8)", contextualisation(load_result(src / "ctx")))
    if (src / "playground_gpu.md").is_file():
        body = (src / "playground_gpu.md").read_text().split("\n", 2)[2]
        text = replace_block(text, "### Playground comparison on the GPU (issue 7)", body)
    RESULTS.write_text(text)
    print("updated", RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
