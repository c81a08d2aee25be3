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
    from tests.tiny import tiny_model

    return tiny_model()
