"""``mechscope playground``: strategies from the command line; bad input is one error line."""

import pytest

from mechscope.app.cli import main
from mechscope.app.commands.playground import strategy_from_args
from mechscope.probes.cad import CAD
from mechscope.probes.dola import DoLa
from mechscope.probes.errors import InputError


def test_strategy_from_args():
    assert strategy_from_args("cad", '{"context": "c", "alpha": 0.3}') == CAD(context="c", alpha=0.3)
    assert strategy_from_args("dola", '{"layers": [2, 4]}') == DoLa(layers=(2, 4))
    assert strategy_from_args("decore", '{"heads": [[1, 2]]}').heads == ((1, 2),)
    with pytest.raises(InputError, match="not JSON"):
        strategy_from_args("cad", "{context")


@pytest.mark.parametrize("argv,message", [
    (["--strategy", "cad", "--strategy-args", '{"context": ""}'], "non-empty context"),
    (["--strategy", "contrastive_decoding", "--strategy-args", '{"beta": 2, "amateur_layer": 1}'], "β must lie"),
    (["--strategy", "dola", "--strategy-args", '{"layers": "middle"}'], "DoLa layers"),
    (["--strategy", "nope"], "Unknown strategy"),
    (["--strategy-side", "intervened", "--strategy", "cad", "--strategy-args", '{"alpha": -1, "context": "c"}'], "α"),
])
def test_bad_strategy_is_one_line(argv, message, capsys):
    assert main(["playground", "--prompt", "Hi", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
