import pytest
import torch

from model.config import tiny
from model.corpus import vocabulary_text
from model.modeling import RegionScribeModel
from model.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(vocabulary_text())


@pytest.fixture(scope="session")
def untrained(tokenizer):
    torch.manual_seed(0)
    return RegionScribeModel(tiny(), tokenizer).eval()
