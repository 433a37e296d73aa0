import numpy as np
import pytest
import torch

from specprune_ros.model.checkpoint import load_tiny_random
from specprune_ros.model.prompt import encode_prompt
from specprune_ros.synthetic import INSTRUCTION, episode


@pytest.fixture(scope="session")
def tiny():
    return load_tiny_random("cpu")


@pytest.fixture(scope="session")
def tiny_inputs(tiny):
    """pixels (2, 6, 224, 224), normalized proprio and the encoded prompt of one synthetic step."""
    from specprune_ros.model.processing import ImageProcessor
    step = episode(3)[1]
    proc = ImageProcessor(224, True)
    frames = proc.frames([step.primary, step.wrist])
    proprio = torch.tensor(tiny.stats.normalize_proprio(step.proprio), dtype=torch.float32)
    return frames, proc.pixels(frames), proprio, encode_prompt(tiny.tokenizer, INSTRUCTION)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
