"""The Python API refuses empty and malformed inputs with an error that says what it
expected (issue: an empty list gave a raw torch.cat error, a 0-frame video was accepted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffret_cli import api
from diffret_cli.errors import ConfigError
from train_helpers import tiny_model_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return api.build(tiny_model_config(), load_pretrained=False).eval()


def test_empty_and_zero_frame_videos_are_refused(model):
    with pytest.raises(ConfigError, match="no videos"):
        api.encode_videos(model, [])
    with pytest.raises(ConfigError, match=r"video 1: .*T >= 1.*\[0, 8, 8, 3\]"):
        api.encode_videos(model, [np.zeros((2, 8, 8, 3), np.uint8), np.zeros((0, 8, 8, 3), np.uint8)])
    with pytest.raises(ConfigError, match="float32"):
        api.encode_videos(model, [np.zeros((2, 8, 8, 3), np.float32)])


def test_texts_must_be_a_non_empty_list_of_strings(model):
    with pytest.raises(ConfigError, match="non-empty list"):
        api.encode_texts(model, [])
    one = api.encode_texts(model, "a red circle")  # a single string is one caption
    assert one.cls.shape[0] == 1


def test_valid_videos_of_any_length_encode(model):
    v = api.encode_videos(model, [np.zeros((1, 8, 8, 3), np.uint8), np.full((9, 20, 12, 3), 200, np.uint8)])
    assert v.frames.shape[0] == 2 and v.mask[0].sum() == 1 and v.mask[1].sum() == model.config["max_frames"]
