"""Image sampling: always well-formed, reproducible per seed, scored per digit."""

import numpy as np
import pytest
import torch

from cl_platform.suites.digits.generation import ImageSampling, generate_image_tokens, generate_images, generation_eval, probe_digits
from cl_platform.models.tiny import TinyModelConfig, build_tiny_model
from cl_platform.suites.digits import vocab as V


@pytest.fixture(scope="module")
def model():
    cfg = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    return build_tiny_model(V.DIGITS_SPEC, cfg, vocabulary_map=dict(V.TOKEN_TO_ID), seed=0)


def test_untrained_model_still_yields_well_formed_images(model):
    tokens = generate_image_tokens(model, [0, 5, 9], seed=0, sampling=ImageSampling(temperature=0.0, batch_size=2))
    assert tokens.shape == (3, V.IMAGE_SEQ_LEN)
    assert (tokens[:, 0] == V.BOI_ID).all() and (tokens[:, -1] == V.EOI_ID).all()
    codes = tokens[:, 1:-1]
    assert ((codes >= V.IMAGE_CODE_LO) & (codes < V.IMAGE_CODE_HI)).all()


def test_seeded_and_rng_neutral(model):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate_images(model, [1, 2], seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)  # the global RNG is untouched
    assert (a == generate_images(model, [1, 2], seed=7)).all()
    assert not (a == generate_images(model, [1, 2], seed=8)).all()


def test_generation_eval_scores_with_the_judge(model):
    class SaysThree:
        def predict(self, images):
            return np.full(len(images), 3)

    res = generation_eval(model, SaysThree(), per_digit=2, seed=0)
    assert res.digits.tolist() == probe_digits(2)
    assert res.score == pytest.approx(0.1)
    assert res.per_digit[3] == 1.0 and res.per_digit[0] == 0.0
    assert res.summary()["n"] == 20


def test_bad_inputs():
    with pytest.raises(ValueError):
        ImageSampling(temperature=-1)
    with pytest.raises(ValueError):
        probe_digits(0)
