"""Head labels and layer lists: one formatter and parser (probes.hooknames)."""

import pytest

from mechscope.probes.errors import InputError
from mechscope.probes.hooknames import head_label, name, parse_head, parse_heads, parse_layers


def test_head_label_round_trips():
    assert head_label(3, 7) == "L3H7"
    assert parse_head("L3H7") == (3, 7)
    assert parse_head(" 12:0 ") == (12, 0)
    assert parse_head("l2h5") == (2, 5)
    for layer, head in [(0, 0), (29, 8), (101, 13)]:
        assert parse_head(head_label(layer, head)) == (layer, head)


@pytest.mark.parametrize("bad", ["", "L3", "3-7", "H3L7", "L3H", "a:b"])
def test_parse_head_refuses(bad):
    with pytest.raises(InputError):
        parse_head(bad)


def test_parse_heads():
    assert parse_heads("L0H1, 2:3 L4H5") == [(0, 1), (2, 3), (4, 5)]
    assert parse_heads(["L1H1"]) == [(1, 1)]
    assert parse_heads("") == []


def test_parse_layers():
    assert parse_layers("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_layers("7,2,5,2") == [2, 5, 7]
    assert parse_layers(None) is None and parse_layers("  ") is None
    for bad in ("3-1", "a", "1,,2"):
        with pytest.raises(InputError):
            parse_layers(bad)


def test_names_outside_the_blocks():
    assert name("embed") == "hook_embed" and name("pos_embed") == "hook_pos_embed"
    assert name("attn_scores", 4) == "blocks.4.attn.hook_attn_scores"
    assert name("resid_post", 2) == "blocks.2.hook_resid_post"
