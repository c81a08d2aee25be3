import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model, loaded once for the whole session: LoadedModel(model, spec)."""
    from probes.models import load

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
