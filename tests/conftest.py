import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `make test` runs the suite on two pytest-xdist workers of one torch thread each
# (MECHSCOPE_TORCH_THREADS sets the count explicitly).
_threads = os.environ.get("MECHSCOPE_TORCH_THREADS") or ("1" if os.environ.get("PYTEST_XDIST_WORKER") else "")
if _threads:
    import torch

    torch.set_num_threads(int(_threads))

# Under `--dist loadfile` a module's tests share one worker (its module fixtures are built
# once), except these modules of independent cases, whose tests are spread over the workers.
SPREAD_MODULES = {"test_rerun_every_analysis.py", "test_app.py"}


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module.rsplit("/", 1)[-1] in SPREAD_MODULES else module

    return ModuleScheduling(config, log)


def pytest_report_header(config):
    import torch

    return f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


@pytest.fixture(scope="session")
def hf_smollm2():
    """The embedded model's GGUF read by Hugging Face transformers (float32): the reference
    implementation that the hooked model and the decoders are compared with."""
    import torch
    from transformers import AutoModelForCausalLM

    from mechscope.probes import models

    models.quiet_transformers()
    path = models.smollm2_gguf_path()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model, loaded once for the whole session: LoadedModel(model, spec)."""
    from mechscope.probes.models import load

    return load("smollm2-135m")


@pytest.fixture
def tiny():
    """2 layers, 4 heads, float32."""
    from tests.tiny import tiny_model

    return tiny_model()


@pytest.fixture
def tiny_gqa():
    """2 layers, 4 query heads sharing 2 key/value heads (grouped-query attention), float32."""
    from tests.tiny import tiny_model

    return tiny_model(n_key_value_heads=2)


@pytest.fixture
def tiny64():
    """The tiny model in float64, for tests where two computations must agree exactly."""
    import torch

    from tests.tiny import tiny_model

    return tiny_model(dtype=torch.float64)
