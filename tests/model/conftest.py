import pytest
import torch

from regionscribe.model.config import tiny
from regionscribe.training.corpus import vocabulary_text
from regionscribe.model.modeling import RegionScribeModel
from regionscribe.model.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(vocabulary_text())


@pytest.fixture(scope="session")
def untrained(tokenizer):
    torch.manual_seed(0)
    return RegionScribeModel(tiny(), tokenizer).eval()
