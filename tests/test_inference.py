"""Batched inference: padding-safe batching and un-normalisation with the dataset statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prismatic.models.batch import policy_batch
from prismatic.models.inference import ActionPredictor, select_statistics
from prismatic.models.loaders import load_prismatic_vlm
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.prompting import vla_prompt_ids
from prismatic.models.tokenizer import load_tokenizer
from prismatic.vla.constants import LIBERO_CONSTANTS

STATS = {
    "libero_spatial_no_noops": {
        "action": {"q01": [-0.9] * 6 + [-1.0], "q99": [0.9] * 6 + [1.0], "mask": [True] * 6 + [False]},
        "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8},
    }
}


@pytest.fixture(scope="module")
def predictor(tiny_assets: tuple[Path, Path]) -> ActionPredictor:
    torch.manual_seed(0)
    policy = VLAAdapterPolicy(load_prismatic_vlm(tiny_assets[0], num_images=2), LIBERO_CONSTANTS)
    with torch.no_grad():  # make the untrained head's output depend visibly on its inputs
        policy.action_head.model.fc2.weight.mul_(50)
    return ActionPredictor(policy, load_tokenizer(tiny_assets[1]), STATS)


def _inputs(num_samples: int) -> tuple[list[list[np.ndarray]], list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(2)] for _ in range(num_samples)]
    texts = [
        "pick up the black bowl next to the ramekin and place it on the plate",
        "turn on the stove",
        "put both the alphabet soup and the tomato sauce in the basket",
    ][:num_samples]
    return images, texts, rng.uniform(-1, 1, (num_samples, 8)).astype(np.float32)


def test_batch_equals_one_by_one(predictor: ActionPredictor) -> None:
    images, texts, proprio = _inputs(3)
    batched = predictor.predict(images, texts, proprio)
    single = np.concatenate(
        [predictor.predict(images[i : i + 1], texts[i : i + 1], proprio[i : i + 1]) for i in range(3)]
    )
    assert batched.shape == (3, 8, 7)
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=1e-4)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3  # different inputs, different actions


def test_actions_are_unnormalised_with_the_statistics(predictor: ActionPredictor) -> None:
    images, texts, proprio = _inputs(2)
    with torch.no_grad():
        batch = policy_batch(
            [vla_prompt_ids(predictor.tokenizer, t) for t in texts],
            predictor.tokenizer.pad_token_id,
            torch.stack([predictor.processor(v) for v in images]),
            proprio=torch.from_numpy(proprio),
        )
        normalised = predictor.policy(batch).actions.numpy()
    raw = predictor.predict(images, texts, proprio)
    np.testing.assert_allclose(raw[..., :6], 0.5 * (normalised[..., :6] + 1) * (1.8 + 1e-8) - 0.9, rtol=1e-5)
    np.testing.assert_allclose(raw[..., 6], normalised[..., 6], rtol=1e-5)  # gripper is not normalised


def test_bad_inputs_are_rejected(predictor: ActionPredictor) -> None:
    images, texts, proprio = _inputs(2)
    with pytest.raises(ValueError, match="num_images_in_input"):
        predictor.predict([v[:1] for v in images], texts, proprio)
    with pytest.raises(ValueError, match="proprio"):
        predictor.predict(images, texts, None)
    with pytest.raises(ValueError, match="unnorm_key"):
        select_statistics({"a": {}, "b": {}})
