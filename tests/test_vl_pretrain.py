"""VL pretraining of the tiny VLM: world-true questions, answer-only logits, training, the saved folder."""

from __future__ import annotations

import copy
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prismatic.assets.config_bundle import write_config_bundle
from prismatic.assets.tiny_vlm import init_vlm
from prismatic.models.image_processing import PrismaticImageProcessor
from prismatic.models.loaders import load_prismatic_vlm
from prismatic.models.presets import QWEN25_PADDED_VOCAB_SIZE, TINY
from prismatic.models.tokenizer import load_tokenizer
from prismatic.synthetic.vl_questions import (
    DEFAULT_FAMILIES,
    FAMILIES,
    NUM_VIEWS,
    VLSetSpec,
    build_scene_set,
    display_name,
    gripper_question,
    left_right_question,
    majority_rates,
    make_scene,
    nearer_answer,
    nearer_robot_question,
    render_views,
    sample_scene_state,
    side_answer,
)
from prismatic.training.vl_pretrain import (
    VL_RECORD_FILE,
    VLEncoder,
    VLTrainConfig,
    both_views,
    build_vl_prompt,
    collate_vl,
    evaluate_vl,
    heldout_set_from_record,
    pretrain_vl,
    train_vl,
    vl_forward,
)

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "vla-scripts" / "pretrain_tiny_vlm.py"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config_bundle(tmp_path_factory.mktemp("vl_bundle") / "configs-tiny", TINY)


@pytest.fixture(scope="module")
def tokenizer(bundle: Path):
    return load_tokenizer(bundle)


@pytest.fixture(scope="module")
def small_set():
    return build_scene_set(VLSetSpec(seed=5, split="train", num_scenes=4))


def test_scenes_are_deterministic_for_a_seed_and_the_splits_disjoint() -> None:
    spec = VLSetSpec(seed=1, split="train", num_scenes=3)
    first, again = build_scene_set(spec), build_scene_set(spec)
    assert first.images.shape == (3, NUM_VIEWS, 224, 224, 3) and first.images.dtype == np.uint8
    assert np.array_equal(first.images, again.images) and first.questions == again.questions
    heldout = build_scene_set(VLSetSpec(seed=1, split="heldout", num_scenes=3))
    assert not any(np.array_equal(a, b) for a in first.images for b in heldout.images)

    def layouts(split: str) -> set[tuple]:
        states = [sample_scene_state(VLSetSpec(seed=1, split=split, num_scenes=20), i)[0] for i in range(20)]
        return {tuple(tuple(np.round(e.pos, 6).tolist()) for e in s.entities.values()) for s in states}

    assert not layouts("train") & layouts("heldout")
    other_seed = build_scene_set(VLSetSpec(seed=2, split="train", num_scenes=3))
    assert not np.array_equal(first.images, other_seed.images)


def test_answers_follow_the_scene_not_the_text() -> None:
    spec = VLSetSpec(seed=0, split="train", num_scenes=1)
    state, texture, wall = sample_scene_state(spec, 0)
    question = left_right_question(state, np.random.default_rng(0))
    assert question is not None and question.answer in ("left", "right")
    shown = re.fullmatch(r"In the image, is the (.+) to the left or to the right of the (.+)\?", question.question)
    first, second = (next(n for n in state.entities if display_name(n) == name) for name in shown.groups())
    assert side_answer(state, first, second) == question.answer
    swapped = copy.deepcopy(state)
    swapped.entities[first].pos, swapped.entities[second].pos = state.entities[second].pos, state.entities[first].pos
    assert side_answer(swapped, first, second) != question.answer  # same question, other layout, other answer
    assert nearer_answer(state, first, second) != nearer_answer(swapped, first, second)
    nearer = nearer_robot_question(state, np.random.default_rng(1))
    assert nearer is not None and nearer.answer in ("yes", "no")

    closed = copy.deepcopy(state)
    opened = copy.deepcopy(state)
    object.__setattr__(closed, "finger_gap", 0.0)
    object.__setattr__(opened, "finger_gap", 0.039)
    assert (gripper_question(closed).answer, gripper_question(opened).answer) == ("closed", "open")
    wrist_closed, wrist_open = (
        render_views(closed, texture, wall, spec)[1],
        render_views(opened, texture, wall, spec)[1],
    )
    assert np.abs(wrist_closed.astype(int) - wrist_open.astype(int)).sum() > 0  # the wrist view shows it


def test_families_select_questions_without_changing_them() -> None:
    every = VLSetSpec(seed=3, split="train", num_scenes=6, families=FAMILIES)
    default = VLSetSpec(seed=3, split="train", num_scenes=6)
    assert default.families == DEFAULT_FAMILIES and VLSetSpec.from_dict(default.to_dict()) == default
    assert default.key() != every.key()
    for index in range(6):
        _, all_questions = make_scene(every, index)
        _, asked = make_scene(default, index)
        assert asked == tuple(q for q in all_questions if q.family in DEFAULT_FAMILIES)
        assert {"gripper", "count"} <= {q.family for q in asked}  # in every scene: no scene goes unasked
    reordered = VLSetSpec(seed=3, split="train", num_scenes=6, families=("count", "gripper"))
    assert reordered.families == ("gripper", "count")  # canonical order, so one set has one key
    for bad in ((), ("colour",)):
        with pytest.raises(ValueError, match="families must be a non-empty subset"):
            VLSetSpec(seed=0, split="train", num_scenes=1, families=bad)


def test_chance_levels_are_majority_rates(small_set) -> None:
    chance = majority_rates(small_set.examples())
    assert set(chance) <= {q.family for qs in small_set.questions for q in qs}
    assert all(0 < rate <= 1 for rate in chance.values())


def test_prompt_format_and_answer_only_logits(tokenizer, small_set) -> None:
    encoder = VLEncoder(tokenizer)
    questions = small_set.questions[0]
    ids, is_answer = encoder.conversation(questions[:1])
    prompt = tokenizer(build_vl_prompt(questions[0].question)).input_ids
    assert ids == prompt + tokenizer(questions[0].answer, add_special_tokens=False).input_ids
    assert is_answer == [False] * len(prompt) + [True] * (len(ids) - len(prompt))
    assert build_vl_prompt("q").endswith("<|im_start|>assistant\n") and "<|im_start|>user\nq<|im_end|>" in (
        build_vl_prompt("q")
    )

    vlm = init_vlm(TINY, 0).eval()
    conversations = [(0, list(questions)), (2, [small_set.questions[2][0]]), (0, [questions[1]])]
    batch = collate_vl(small_set, conversations, encoder, PrismaticImageProcessor())
    assert batch.pixel_values.shape == (2, 6 * NUM_VIEWS, 224, 224)  # scene 0 encoded once
    num_answer_tokens = sum(len(encoder.answer_ids(q.answer)) for _, qs in conversations for q in qs)
    with torch.no_grad(), both_views(vlm):
        logits = vl_forward(vlm, batch)
        # reference: every position through the LM head, then the ones predicting answer tokens
        patches = vlm.encode_images(batch.pixel_values)[batch.image_index]
        sequence, _ = vlm.assemble(
            patches, vlm.language_model.get_input_embeddings()(batch.input_ids), batch.attention_mask
        )
        full = vlm.language_model(inputs_embeds=sequence, use_cache=False).logits
    assert logits.shape == (num_answer_tokens, QWEN25_PADDED_VOCAB_SIZE) == (batch.answer_mask.sum(), full.shape[-1])
    rows, columns = batch.answer_mask.nonzero(as_tuple=True)
    torch.testing.assert_close(logits, full[rows, columns + patches.shape[1] - 1])
    assert batch.targets.tolist() == [t for _, qs in conversations for q in qs for t in encoder.answer_ids(q.answer)]
    assert vlm.vision_backbone.num_images == 1  # restored


def test_training_is_deterministic_and_lowers_the_loss(tokenizer, small_set) -> None:
    config = VLTrainConfig(steps=8, batch_size=2, learning_rate=3e-3, warmup_steps=2, seed=4)
    first = train_vl(init_vlm(TINY, 0), small_set, tokenizer, config, progress=False)
    again = train_vl(init_vlm(TINY, 0), small_set, tokenizer, config, progress=False)
    assert first == again
    assert np.mean(first[-2:]) < np.mean(first[:2])


def test_pretrained_folder_loads_and_scores_the_same(tmp_path: Path, bundle: Path, tokenizer) -> None:
    config = VLTrainConfig(steps=6, batch_size=3, learning_rate=3e-3, warmup_steps=1, seed=0)
    folder = tmp_path / "vl"
    record = pretrain_vl(folder, bundle, 0, train_scenes=6, heldout_scenes=3, config=config, progress=False)
    assert record["loss_last_steps"] < record["loss_first_steps"]
    assert (folder / VL_RECORD_FILE).is_file() and any((folder / "checkpoints").glob("step-000006-*.pt"))
    assert record["heldout_spec"] == {**record["heldout_spec"], "split": "heldout", "num_scenes": 3, "seed": 0}
    assert record["num_heldout_examples"] == record["heldout_after"]["num_examples"]
    loaded = load_prismatic_vlm(folder)
    assert loaded.vision_backbone.num_images == 1
    scores = evaluate_vl(loaded, heldout_set_from_record(folder), tokenizer, batch_size=4)
    assert scores == record["heldout_after"]
    assert set(scores["per_family"]) == set(scores["chance"])
    with pytest.raises(FileExistsError):
        pretrain_vl(folder, bundle, 0, train_scenes=6, heldout_scenes=3, config=config, progress=False)


def run_script(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    old = sys.argv
    sys.argv = [str(SCRIPT), *args]
    code = 0
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "steps and batch_size must be >= 1"),
        (["--train_scenes", "0"], "--train_scenes must be >= 1"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number"),
        (["--batch_size", "two"], "--batch_size"),
    ],
)
def test_script_bad_flags_are_one_line_errors(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_script(["--vlm_dir", str(tmp_path / "vl"), "--bundle_dir", str(tmp_path / "b"), *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "vl").exists()


def test_script_refuses_an_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "vl").mkdir()
    code, err = run_script(["--vlm_dir", str(tmp_path / "vl"), "--bundle_dir", str(tmp_path / "b")], capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()  # refused before any work
