import pytest
import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Conv weights (exercising the flattened path), a hidden Linear, a classifier head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.hidden = nn.Linear(8 * 16, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        return self.head(torch.relu(self.hidden(x)))


class TinyLM(nn.Module):
    """Embedding, two same-shape hidden Linears (one batch), an untied head with vocab outputs."""

    def __init__(self, vocab=17, width=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        x = x + self.b(torch.relu(self.a(x)))
        return self.lm_head(self.norm(x))


def conv_batch(step: int):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)


def lm_batch(step: int):
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, 17, (4, 9), generator=gen), torch.randint(0, 17, (4, 9), generator=gen)


@pytest.fixture
def conv_model():
    torch.manual_seed(0)
    return TinyConvNet()


@pytest.fixture
def lm_model():
    torch.manual_seed(0)
    return TinyLM()
