"""Vision-language pretraining of a Prismatic VLM on questions about synthetic scenes, and its held-out evaluation.

The prompt is the VLA prompt's chat format with the question as the user turn; the answer tokens follow the
assistant marker. Training packs all questions about a scene into one multi-turn conversation (images once, then
`user / assistant` turns), so one image encoding supervises ~5 answers; evaluation asks every question alone, in
exactly the single-turn format, so a fine-tuned VLM is scored the same way whatever it was trained with.

Only the positions that predict answer tokens go through the tied LM head (`vl_forward`): no 151,936-way logits
for the 500+ patch and prompt positions.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from prismatic.assets.config_bundle import write_config_bundle
from prismatic.assets.tiny_vlm import init_vlm
from prismatic.models.image_processing import PrismaticImageProcessor
from prismatic.models.policy import unwrap_vlm
from prismatic.models.presets import TINY
from prismatic.models.prompting import QWEN_SYSTEM_PROMPT
from prismatic.models.savers import write_prismatic_vlm_folder
from prismatic.models.tokenizer import load_tokenizer
from prismatic.models.vlm import PrismaticVLM, llm_attention_mask
from prismatic.synthetic.vl_questions import (
    DEFAULT_FAMILIES,
    FAMILIES,
    NUM_VIEWS,
    VLExample,
    VLQuestion,
    VLSceneSet,
    VLSetSpec,
    build_scene_set,
    load_or_build_scene_set,
    majority_rates,
)
from prismatic.util.atomic_io import atomic_write_json, staged_directory

VL_RECORD_FILE = "vl_pretraining.json"
RECORD_VERSION = 1


# -- prompt / answer encoding ------------------------------------------------------------------------------------
def build_vl_prompt(question: str, system_prompt: str = QWEN_SYSTEM_PROMPT) -> str:
    """The single-turn prompt: `build_vla_prompt`'s format with the question as the user turn."""
    return (
        f"<|im_start|>system\n{system_prompt}<|im_end|>\n"
        f"<|im_start|>user\n{question.strip()}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def follow_up_turn(question: str) -> str:
    """What follows an answer when the conversation goes on: end of the assistant turn, the next question."""
    return f"<|im_end|>\n<|im_start|>user\n{question.strip()}<|im_end|>\n<|im_start|>assistant\n"


class VLEncoder:
    """Token ids of prompts, follow-up turns and answers, each string tokenised once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self._cache: dict[tuple[str, str], list[int]] = {}

    def _ids(self, kind: str, text: str) -> list[int]:
        key = (kind, text)
        if key not in self._cache:
            if kind == "prompt":
                ids = self.tokenizer(build_vl_prompt(text), add_special_tokens=True).input_ids
            elif kind == "follow_up":
                ids = self.tokenizer(follow_up_turn(text), add_special_tokens=False).input_ids
            else:
                ids = self.tokenizer(text, add_special_tokens=False).input_ids
            if not ids:
                raise ValueError(f"{kind} {text!r} tokenises to nothing")
            self._cache[key] = list(ids)
        return self._cache[key]

    def answer_ids(self, answer: str) -> list[int]:
        return self._ids("answer", answer)

    def conversation(self, questions: Sequence[VLQuestion]) -> tuple[list[int], list[bool]]:
        """Token ids of the questions asked one after the other, and which of them are answer tokens.

        One question gives exactly `build_vl_prompt(question)` followed by the answer's tokens (no end-of-turn
        token: the answer is what is scored)."""
        ids: list[int] = []
        is_answer: list[bool] = []
        for turn, question in enumerate(questions):
            prefix = self._ids("prompt" if turn == 0 else "follow_up", question.question)
            answer = self.answer_ids(question.answer)
            ids += prefix + answer
            is_answer += [False] * len(prefix) + [True] * len(answer)
        return ids, is_answer


# -- batches -----------------------------------------------------------------------------------------------------
@dataclass
class VLBatch:
    """Right-padded conversations about a few scenes; each scene's images are encoded once."""

    pixel_values: torch.Tensor  # (U, 6 x 2, 224, 224): the distinct scenes of the batch
    image_index: torch.Tensor  # (B,) which row of `pixel_values` each conversation looks at
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) 1 on real tokens
    answer_mask: torch.Tensor  # (B, T) bool: answer tokens (always at position >= 1)
    answer_question: torch.Tensor  # (N,) for each answer token (row-major order): its question in `families`
    families: list[str]  # family of every question of the batch, in order

    @property
    def targets(self) -> torch.Tensor:
        """The answer tokens, in the order of `vl_forward`'s logits."""
        return self.input_ids[self.answer_mask]


def collate_vl(
    scene_set: VLSceneSet,
    conversations: Sequence[tuple[int, Sequence[VLQuestion]]],
    encoder: VLEncoder,
    processor: PrismaticImageProcessor,
) -> VLBatch:
    """A batch of (scene index, questions asked in order) conversations."""
    scenes = sorted({scene for scene, _ in conversations})
    row_of = {scene: row for row, scene in enumerate(scenes)}
    encoded = [encoder.conversation(questions) for _, questions in conversations]
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), encoder.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
    answer_mask = torch.zeros((len(encoded), length), dtype=torch.bool)
    answer_question: list[int] = []
    families: list[str] = []
    for row, ((ids, is_answer), (_, questions)) in enumerate(zip(encoded, conversations, strict=True)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        answer_mask[row, : len(ids)] = torch.tensor(is_answer)
        for question in questions:
            answer_question += [len(families)] * len(encoder.answer_ids(question.answer))
            families.append(question.family)
    images = torch.from_numpy(scene_set.images[scenes])  # (U, 2, H, W, 3) uint8
    return VLBatch(
        pixel_values=processor.normalize_uint8(images),
        image_index=torch.tensor([row_of[scene] for scene, _ in conversations]),
        input_ids=input_ids,
        attention_mask=attention_mask,
        answer_mask=answer_mask,
        answer_question=torch.tensor(answer_question, dtype=torch.long),
        families=families,
    )


@contextlib.contextmanager
def both_views(vlm: PrismaticVLM) -> Iterator[PrismaticVLM]:
    """The VLM set to read the third-person and wrist images (as a policy with 2 images does), then restored."""
    previous = vlm.vision_backbone.num_images
    vlm.set_num_images(NUM_VIEWS)
    try:
        yield vlm
    finally:
        vlm.set_num_images(previous)


def vl_forward(vlm: PrismaticVLM, batch: VLBatch) -> torch.Tensor:
    """Logits (N, vocab) for the N answer tokens of `batch` (row-major order, like `batch.targets`).

    Sequence as in `PrismaticVLM.forward`: [prompt token 0, patches, prompt tokens 1..]; text position t sits at
    multimodal position t + P and is predicted from position t + P - 1, whose final (normed) hidden state is the
    only one that goes through the LM head. The VLM must be set to `NUM_VIEWS` images (`both_views`).
    """
    patches = vlm.encode_images(batch.pixel_values)[batch.image_index]
    embeddings = vlm.language_model.get_input_embeddings()(batch.input_ids)
    sequence, mask = vlm.assemble(patches, embeddings, batch.attention_mask)
    hidden = vlm.language_model.model(
        inputs_embeds=sequence, attention_mask=llm_attention_mask(mask), use_cache=False
    ).last_hidden_state
    rows, columns = batch.answer_mask.nonzero(as_tuple=True)
    return vlm.language_model.lm_head(hidden[rows, columns + patches.shape[1] - 1])


# -- training ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VLTrainConfig:
    steps: int = 600
    batch_size: int = 16  # scenes (conversations) per step
    learning_rate: float = 6e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05  # cosine decay ends at this fraction of the peak rate
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0  # order of scenes and of the questions within each conversation

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1 (got {self.steps}, {self.batch_size})")
        if self.learning_rate <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"learning_rate must be > 0 and min_lr_ratio in [0, 1] (got {self.learning_rate})")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0, max_grad_norm > 0")

    def lr(self, step: int) -> float:
        """Linear warmup, then cosine decay to `min_lr_ratio` of the peak at the last step."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        span = max(1, self.steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.learning_rate * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)


def training_conversations(
    scene_set: VLSceneSet, config: VLTrainConfig
) -> Iterator[list[tuple[int, list[VLQuestion]]]]:
    """`config.steps` batches: scenes in a fresh seeded permutation per epoch, each scene's questions in a seeded
    random order (so every family is also asked first, in the evaluation's single-turn position)."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2]))
    scenes = np.array(scene_set.scenes_with_questions())
    if len(scenes) == 0:
        raise ValueError(f"no scene of the training set has a question of the families {list(scene_set.spec.families)}")
    order: list[int] = []
    for _ in range(config.steps):
        while len(order) < config.batch_size:
            order += scenes[rng.permutation(len(scenes))].tolist()
        picked, order = order[: config.batch_size], order[config.batch_size :]
        batch = []
        for scene in picked:
            questions = list(scene_set.questions[scene])
            batch.append((scene, [questions[i] for i in rng.permutation(len(questions))]))
        yield batch


def train_vl(
    vlm: PrismaticVLM,
    scene_set: VLSceneSet,
    tokenizer: PreTrainedTokenizerBase,
    config: VLTrainConfig,
    progress: bool = True,
) -> list[float]:
    """Train every parameter of `vlm` on `scene_set` (AdamW, fp32); returns the loss of every step."""
    encoder, processor = VLEncoder(tokenizer), PrismaticImageProcessor(vlm.preset.image_size)
    parameters = [p for p in vlm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    losses: list[float] = []
    vlm.train()
    bar = tqdm(total=config.steps, desc="vl-pretrain", disable=not progress, dynamic_ncols=True)
    with both_views(vlm):
        for step, conversations in enumerate(training_conversations(scene_set, config)):
            batch = collate_vl(scene_set, conversations, encoder, processor)
            for group in optimizer.param_groups:
                group["lr"] = config.lr(step)
            loss = F.cross_entropy(vl_forward(vlm, batch), batch.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{config.lr(step):.1e}")
    bar.close()
    vlm.eval()
    return losses


# -- evaluation --------------------------------------------------------------------------------------------------
def _accuracies(token_right: Sequence[int], token_total: Sequence[int], exact: Sequence[int], count: int) -> dict:
    return {
        "token_accuracy": sum(token_right) / max(1, sum(token_total)),
        "exact_accuracy": sum(exact) / max(1, count),
        "num_examples": count,
    }


@torch.inference_mode()
def evaluate_vl(
    vlm: nn.Module, scene_set: VLSceneSet, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32
) -> dict[str, Any]:
    """Held-out VL accuracy of any Prismatic VLM (also a peft-wrapped or fine-tuned one): every question asked
    alone, greedy teacher-forced. `token_accuracy`: answer tokens whose argmax is right; `exact_accuracy`: questions
    with all answer tokens right; both overall and `per_family`, with each family's `chance` (majority answer rate).
    `family_mean` averages the families with equal weight."""
    base = unwrap_vlm(vlm)
    encoder, processor = VLEncoder(tokenizer), PrismaticImageProcessor(base.preset.image_size)
    examples: list[VLExample] = scene_set.examples()
    families: list[str] = []
    token_right: list[int] = []
    token_total: list[int] = []
    exact: list[int] = []
    was_training = base.training
    base.eval()
    try:
        with both_views(base):
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                batch = collate_vl(scene_set, [(ex.scene, [ex.question]) for ex in chunk], encoder, processor)
                right = (vl_forward(base, batch).argmax(dim=-1) == batch.targets).long()
                per_question = torch.zeros(len(chunk), dtype=torch.long).index_add_(0, batch.answer_question, right)
                lengths = torch.bincount(batch.answer_question, minlength=len(chunk))
                families += batch.families
                token_right += per_question.tolist()
                token_total += lengths.tolist()
                exact += (per_question == lengths).long().tolist()
    finally:
        base.train(was_training)
    chance = majority_rates(examples)
    per_family = {}
    for family in chance:
        rows = [i for i, name in enumerate(families) if name == family]
        per_family[family] = {
            **_accuracies(
                [token_right[i] for i in rows], [token_total[i] for i in rows], [exact[i] for i in rows], len(rows)
            ),
            "chance": chance[family],
        }
    return {
        **_accuracies(token_right, token_total, exact, len(examples)),
        "per_family": per_family,
        "chance": chance,
        "family_mean": {
            key: sum(entry[key] for entry in per_family.values()) / max(1, len(per_family))
            for key in ("token_accuracy", "exact_accuracy", "chance")
        },
    }


# -- the held-out set of a pretrained folder ---------------------------------------------------------------------
def heldout_spec(seed: int, num_scenes: int, families: Sequence[str] = DEFAULT_FAMILIES) -> VLSetSpec:
    """The held-out scenes of a run with `seed` (disjoint from its training scenes by the split id)."""
    return VLSetSpec(seed=seed, split="heldout", num_scenes=num_scenes, families=tuple(families))


def read_vl_record(vlm_dir: str | Path) -> dict[str, Any]:
    """`vl_pretraining.json` of a VL-pretrained VLM folder."""
    path = Path(vlm_dir) / VL_RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {vlm_dir} is not a VL-pretrained VLM folder")
    return json.loads(path.read_text())


def heldout_set_from_record(
    record: dict[str, Any] | str | Path, num_workers: int = 1, cache_dir: str | Path | None = None
) -> VLSceneSet:
    """Rebuild the exact held-out set a VL-pretrained folder (or its record) was evaluated on."""
    if not isinstance(record, dict):
        record = read_vl_record(record)
    return load_or_build_scene_set(VLSetSpec.from_dict(record["heldout_spec"]), cache_dir, num_workers)


def evaluate_heldout(
    vlm: nn.Module, vlm_dir: str | Path, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32
) -> dict[str, Any]:
    """`evaluate_vl` of `vlm` (e.g. a policy's fine-tuned VLM) on the held-out set recorded in `vlm_dir`."""
    return evaluate_vl(vlm, heldout_set_from_record(vlm_dir), tokenizer, batch_size)


# -- the whole run -----------------------------------------------------------------------------------------------
def save_vl_pretrained(
    folder: str | Path, vlm: PrismaticVLM, record: dict[str, Any], step: int, seed: int, overwrite: bool = False
) -> Path:
    """The VLM in the native Prismatic folder format plus `vl_pretraining.json`, moved into place together."""
    with staged_directory(folder, overwrite=overwrite) as tmp:
        write_prismatic_vlm_folder(tmp, vlm, step=step, seed=seed, overwrite=True)
        atomic_write_json(tmp / VL_RECORD_FILE, record)
    return Path(folder)


def pretrain_vl(
    vlm_dir: str | Path,
    bundle_dir: str | Path,
    seed: int,
    train_scenes: int,
    heldout_scenes: int,
    config: VLTrainConfig,
    families: Sequence[str] = DEFAULT_FAMILIES,
    eval_batch_size: int = 32,
    num_workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the tiny VLM (initialised from `seed`) on VL questions, evaluate it on held-out scenes before and after,
    and write it to `vlm_dir`; returns the record written next to it. `settings` are stored as given (the flags)."""
    vlm_dir = Path(vlm_dir)
    if vlm_dir.exists() and not overwrite:
        raise FileExistsError(f"{vlm_dir} already exists; pass --overwrite True to replace it")
    started = time.perf_counter()
    write_config_bundle(bundle_dir, TINY)
    tokenizer = load_tokenizer(bundle_dir)
    train_spec = VLSetSpec(seed=seed, split="train", num_scenes=train_scenes, families=tuple(families))
    eval_spec = heldout_spec(seed, heldout_scenes, families)
    train_set = build_scene_set(train_spec, num_workers)
    heldout_set = build_scene_set(eval_spec, num_workers)
    render_seconds = time.perf_counter() - started
    vlm = init_vlm(TINY, seed)
    before = evaluate_vl(vlm, heldout_set, tokenizer, eval_batch_size)
    train_started = time.perf_counter()
    losses = train_vl(vlm, train_set, tokenizer, config, progress=progress)
    train_seconds = time.perf_counter() - train_started
    after = evaluate_vl(vlm, heldout_set, tokenizer, eval_batch_size)
    record = {
        "record_version": RECORD_VERSION,
        "preset": TINY.name,
        "init_seed": seed,
        "settings": settings or {},
        "train": asdict(config),
        "train_spec": train_spec.to_dict(),
        "heldout_spec": eval_spec.to_dict(),
        "families": [family for family in FAMILIES if family in after["chance"]],
        "num_train_examples": train_set.num_examples(),
        "num_heldout_examples": heldout_set.num_examples(),
        "prompt_format": "single turn: build_vl_prompt(question) + answer tokens (prismatic.training.vl_pretrain)",
        "loss_first_steps": float(np.mean(losses[: max(1, len(losses) // 20)])),
        "loss_last_steps": float(np.mean(losses[-max(1, len(losses) // 20) :])),
        "render_seconds": render_seconds,
        "train_seconds": train_seconds,
        "heldout_before": before,
        "heldout_after": after,
        "chance": after["chance"],
        "rebuild": (
            "prismatic.training.vl_pretrain.heldout_set_from_record(<this folder>) rebuilds the held-out set; "
            "evaluate_vl(vlm, that_set, load_tokenizer(<config bundle>)) scores any VLM on it"
        ),
    }
    record["wall_seconds"] = time.perf_counter() - started  # everything but the final write
    save_vl_pretrained(vlm_dir, vlm, record, step=config.steps, seed=seed, overwrite=overwrite)
    return record
