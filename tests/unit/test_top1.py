"""The top-1 reducer (probes.top1): the argmax of the last query's attention, reduced in the hooks."""

import torch

from mechscope.probes.capture import run as capture_run
from mechscope.probes.decoding import generate
from mechscope.probes.top1 import Top1


def test_top1_reducer_matches_full_patterns_on_random_model(tiny64):
    """The cached per-step top-1 equals the argmax of the last row of the full pattern of the
    whole text at that step (computed independently with capture)."""
    prompt = [int(x) for x in torch.randint(0, 50, (20,), generator=torch.Generator().manual_seed(3))]
    top = Top1(tiny64.cfg.n_layers, tiny64.cfg.n_heads)
    gen = generate(tiny64, prompt, max_new_tokens=6, reducers=top.reducers(tiny64), stop_at_eos=False)
    got = top.stacked(len(gen.new_tokens))
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(tiny64.cfg.n_layers)]
    for t in range(len(gen.new_tokens)):
        ids = prompt + list(gen.new_tokens[:t])
        cap = capture_run(tiny64, [ids], capture=names)
        want = torch.stack([cap.activations[n][0][:, -1].argmax(-1) for n in names])
        assert torch.equal(got[t], want)  # integer key positions
    assert len({tuple(r.reshape(-1).tolist()) for r in got}) > 1  # the top-1 positions move


def test_top1_keeps_one_position_per_head_and_pass_and_no_pattern(tiny64):
    """The state is one [layers, heads] integer tensor per forward pass (the prompt pass and one
    per decoding step), whatever the text length: no attention pattern is kept."""
    prompt = list(range(3, 43))
    top = Top1(tiny64.cfg.n_layers, tiny64.cfg.n_heads)
    gen = generate(tiny64, prompt, max_new_tokens=5, reducers=top.reducers(tiny64), stop_at_eos=False)
    assert len(top.steps) == len(gen.new_tokens)  # the prompt pass yields the first token, each step one more
    for s in top.steps:
        assert s.shape == (tiny64.cfg.n_layers, tiny64.cfg.n_heads) and s.dtype == torch.long
        assert ((s >= 0) & (s < len(prompt) + len(gen.new_tokens))).all()


def test_retrieval_reexports_the_probe():
    from mechscope.analyses import retrieval
    from mechscope.probes import top1

    assert retrieval.Top1 is top1.Top1
