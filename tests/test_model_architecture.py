"""Architecture of the Prismatic VLM and the VLA-Adapter head: sizes, feature extraction and the KEEP quirks."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from prismatic.models.action_head import (
    BridgeAttentionBlock,
    BridgeAttentionBlockPro,
    L1RegressionActionHead,
    rope_cos_sin,
    rotate_interleaved,
)
from prismatic.models.batch import policy_batch
from prismatic.models.image_processing import PrismaticImageProcessor
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.presets import FULL, TINY, preset_from_openvla_config
from prismatic.models.vision import create_featurizer
from prismatic.models.vlm import PrismaticVLM, VLMOutput, action_head_features
from prismatic.vla.constants import ACTION_QUERY_TOKEN_ID, LIBERO_CONSTANTS, NUM_ACTION_QUERIES

from conftest import REAL_CONFIG_BUNDLE, require_fixture


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_parameter_counts_on_meta_device() -> None:
    with torch.device("meta"):
        pro = VLAAdapterPolicy(PrismaticVLM(FULL, num_images=2), LIBERO_CONSTANTS, use_pro_version=True)
        original = L1RegressionActionHead(896, 7, 8, num_blocks=24, use_pro_version=False)
    assert count(pro.action_head) == 217_864_223
    assert count(original) == 102_129_695
    assert count(pro.proprio_projector) == 811_776
    assert count(pro.base_vlm.projector) == 27_552_000
    assert count(pro.base_vlm.action_queries) == 57_344
    assert 1.24e9 < count(pro.base_vlm) < 1.26e9  # ~1.25B for the whole VLM


def test_real_config_json_describes_the_full_preset() -> None:
    config = json.loads((require_fixture(REAL_CONFIG_BUNDLE) / "config.json").read_text())
    assert preset_from_openvla_config(config) == FULL


def test_vision_features_are_the_second_to_last_block_without_prefix_tokens() -> None:
    torch.manual_seed(0)
    vit = create_featurizer(TINY.dino).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        manual = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        for block in vit.blocks[:-1]:
            manual = block(manual)
        manual = manual[:, vit.num_prefix_tokens :]
        vlm = PrismaticVLM(TINY).eval()
        vlm.vision_backbone.featurizer.load_state_dict(vit.state_dict())
        fused = vlm.vision_backbone(torch.cat([images, images], dim=1))
    assert vit.num_prefix_tokens == 5  # CLS + 4 registers dropped
    assert fused.shape == (2, 256, TINY.vision_dim)
    torch.testing.assert_close(fused[..., : TINY.dino.embed_dim], manual)
    assert not any("gamma" in n for n, _ in vit.named_parameters())  # LayerScale stored as scale_factor
    assert any(n.endswith("ls1.scale_factor") for n, _ in vit.named_parameters())


def test_two_images_are_concatenated_on_the_token_axis() -> None:
    torch.manual_seed(0)
    vlm = PrismaticVLM(TINY, num_images=2).eval()
    first_image, second_image = torch.randn(1, 6, 224, 224), torch.randn(1, 6, 224, 224)
    with torch.no_grad():
        both = vlm.vision_backbone(torch.cat([first_image, second_image], dim=1))
        vlm.set_num_images(1)
        single = torch.cat([vlm.vision_backbone(first_image), vlm.vision_backbone(second_image)], dim=1)
    assert both.shape == (1, 512, TINY.vision_dim)
    torch.testing.assert_close(both, single)
    with pytest.raises(ValueError, match="num_images_in_input"):
        vlm.vision_backbone(torch.randn(1, 12, 224, 224))


def test_image_processor_uses_the_exact_normalisation() -> None:
    image = np.zeros((224, 224, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 0, 128, 255
    px = PrismaticImageProcessor()(image)
    assert px.shape == (6, 224, 224)
    dino_mean, dino_std = (0.484375, 0.455078125, 0.40625), (0.228515625, 0.2236328125, 0.224609375)
    for channel, value in enumerate((0, 128, 255)):
        assert px[channel, 0, 0].item() == pytest.approx(
            (value / 255 - dino_mean[channel]) / dino_std[channel], abs=1e-5
        )
        assert px[3 + channel, 0, 0].item() == pytest.approx((value / 255 - 0.5) / 0.5, abs=1e-5)
    big = np.full((256, 256, 3), 77, dtype=np.uint8)
    assert PrismaticImageProcessor()([big, big]).shape == (12, 224, 224)  # resized, two images


def test_sequence_assembly_places_patches_and_action_queries() -> None:
    torch.manual_seed(0)
    vlm = PrismaticVLM(TINY).eval()
    with torch.no_grad():
        vlm.action_queries.weight.copy_(torch.arange(NUM_ACTION_QUERIES)[:, None].float().expand(-1, 64))
    ids = torch.tensor([[5, 6, 7] + [ACTION_QUERY_TOKEN_ID] * NUM_ACTION_QUERIES + [0, 0]])
    query_mask = ids == ACTION_QUERY_TOKEN_ID
    emb = vlm.embed_prompt(ids, query_mask)
    token_emb = vlm.language_model.get_input_embeddings()(ids)
    torch.testing.assert_close(emb[0, :3], token_emb[0, :3])
    torch.testing.assert_close(emb[0, 3 : 3 + 64, 0], torch.arange(64).float())
    torch.testing.assert_close(emb[0, -2:], token_emb[0, -2:])
    patches = torch.full((1, 256, 64), -7.0)
    seq, mask = vlm.assemble(patches, emb, torch.tensor([[1] * 67 + [0, 0]]))
    assert seq.shape == (1, 1 + 256 + 68, 64)
    torch.testing.assert_close(seq[0, 0], emb[0, 0])
    assert torch.all(seq[0, 1:257] == -7.0)
    torch.testing.assert_close(seq[0, 257:], emb[0, 1:])
    assert mask[0, :257].all() and mask[0, -2:].sum() == 0
    with pytest.raises(ValueError, match="exactly 64"):
        PrismaticVLM.query_positions(query_mask[:, :-5])


def test_head_features_keep_the_raw_slice_and_shifted_queries() -> None:
    batch_size, layers, num_patches, prompt = 2, 3, 8, 5
    seq_len = 1 + num_patches + (prompt - 1) + NUM_ACTION_QUERIES
    # hidden state value = 1000 * layer + position, so gathered values reveal which positions were taken
    hs = tuple(
        (1000.0 * layer + torch.arange(seq_len).float()).view(1, seq_len, 1).expand(batch_size, seq_len, 4)
        for layer in range(layers)
    )
    positions = torch.arange(prompt, prompt + NUM_ACTION_QUERIES).expand(batch_size, -1)
    out = VLMOutput(
        hs,
        num_patches,
        positions,
        torch.ones(batch_size, seq_len),
        torch.zeros(batch_size, seq_len, dtype=torch.bool),
    )
    feats = action_head_features(out)
    assert feats.shape == (batch_size, layers, num_patches + NUM_ACTION_QUERIES, 4)
    for layer in range(layers):
        raw = feats[0, layer, :num_patches, 0] - 1000 * layer
        # first prompt token + all but the last patch
        torch.testing.assert_close(raw, torch.arange(num_patches).float())
        aq = feats[0, layer, num_patches:, 0] - 1000 * layer
        # query k sits at multimodal position num_patches + prompt + k; the head reads one position earlier
        torch.testing.assert_close(aq, torch.arange(NUM_ACTION_QUERIES).float() + num_patches + prompt - 1)


def test_vocabulary_logits_are_never_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    policy = VLAAdapterPolicy(PrismaticVLM(TINY), LIBERO_CONSTANTS)

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("lm_head was called")

    monkeypatch.setattr(policy.base_vlm.language_model.lm_head, "forward", forbidden)
    batch = policy_batch(
        [[1, 2, 3] + [ACTION_QUERY_TOKEN_ID] * 64], 0, torch.randn(1, 6, 224, 224), proprio=torch.randn(1, 8)
    )
    out = policy(batch)
    assert out.actions.shape == (1, 8, 7)
    assert len(out.vlm.hidden_states) == TINY.llm.num_hidden_layers + 1


def _reference_bridge_attention(block: BridgeAttentionBlock, hidden, h_a, h_t, proprio):
    """Naive per-head loop of the original block's math (one softmax, task logits scaled before it)."""
    heads, hd = block.num_heads, block.head_dim
    adapter = torch.cat([h_a, proprio], dim=1)
    queries = block.q_proj(hidden)
    outs = []
    for head in range(heads):
        sl = slice(head * hd, (head + 1) * hd)
        logits, values = [], []
        for source_index, src in enumerate((hidden, adapter, h_t)):
            keys, source_values = block.k_proj(src)[..., sl], block.v_proj(src)[..., sl]
            scale = math.tanh(block.gating_factor.item()) if source_index == 2 else 1.0
            logits.append(queries[..., sl] @ keys.transpose(-2, -1) * scale)
            values.append(source_values)
        weights = torch.softmax(torch.cat(logits, -1) / math.sqrt(hd), -1)
        outs.append(weights @ torch.cat(values, 1))
    return block.ffn(block.o_proj(torch.cat(outs, -1)) + hidden)


def test_original_block_matches_a_naive_reference() -> None:
    torch.manual_seed(0)
    block = BridgeAttentionBlock(32)
    with torch.no_grad():
        block.gating_factor.fill_(0.7)
    hidden, h_a, h_t = torch.randn(2, 8, 32), torch.randn(2, 64, 32), torch.randn(2, 20, 32)
    proprio = torch.randn(2, 1, 32)
    torch.testing.assert_close(
        block(hidden, h_a=h_a, h_t=h_t, proprio=proprio), _reference_bridge_attention(block, hidden, h_a, h_t, proprio)
    )


def test_pro_block_rope_keeps_the_interleaved_pairing() -> None:
    features = torch.arange(8.0).view(1, 1, 1, 8)
    torch.testing.assert_close(rotate_interleaved(features).flatten(), torch.tensor([-1.0, 0, -3, 2, -5, 4, -7, 6]))
    cos, sin = rope_cos_sin(3, 8, torch.device("cpu"), torch.float32)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    torch.testing.assert_close(cos[2], torch.cat([torch.cos(2 * inv_freq)] * 2), atol=4e-3, rtol=0)  # half-split
    torch.testing.assert_close(sin[0], torch.zeros(8))
    block = BridgeAttentionBlockPro(896)
    names = {n for n, _ in block.named_parameters()}
    assert names == {
        f"{m}.{t}"
        for m in ("q_proj", "k_self", "v_self", "k_adapter", "v_adapter", "k_task", "v_task", "o_proj", "ffn.1")
        for t in ("weight", "bias")
    } | {"ffn.0.weight", "ffn.0.bias", "gating_factor", "film_gen.0.weight", "film_gen.0.bias"}
    assert not block.film_gen[0].weight.requires_grad  # unused, frozen (DDP-safe)


def test_rope_tables_reproduce_the_reference_bf16_computation() -> None:
    """The released heads were trained on rotary tables computed in bf16 (the reference casts the whole head)."""
    cos, sin = rope_cos_sin(600, 112, torch.device("cpu"), torch.float32)  # full size: 896 / 8 heads
    pinned = {  # position: (cos at dims 0, 1, 20), (sin at dims 0, 1, 20)
        257: ((-0.039794921875, -0.97265625, -0.9921875), (-1.0, -0.228515625, -0.1376953125)),
        259: ((-0.73046875, 0.99609375, -0.96484375), (0.68359375, 0.08837890625, -0.259765625)),
        300: ((-0.0220947265625, -0.890625, 0.1904296875), (-1.0, 0.451171875, -0.98046875)),
        511: ((-0.99609375, 0.89453125, 0.9609375), (0.07958984375, 0.443359375, 0.271484375)),
    }
    for position, (cos_values, sin_values) in pinned.items():
        assert cos[position, [0, 1, 20]].tolist() == list(cos_values), position
        assert sin[position, [0, 1, 20]].tolist() == list(sin_values), position
    assert torch.equal(cos[256], cos[257]) and torch.equal(cos[259], cos[260]) and torch.equal(sin[259], sin[261])
    # the reference's mechanism: an fp32 buffer moved to bf16 with its module, bf16 positions, einsum, cos/sin
    holder = torch.nn.Module()
    holder.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, 112, 2).float() / 112)), persistent=False)
    holder.to(torch.bfloat16)
    positions = torch.arange(600, dtype=holder.inv_freq.dtype)
    angles = torch.einsum("i,j->ij", positions, holder.inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    assert torch.equal(cos, angles.cos().float()) and torch.equal(sin, angles.sin().float())
    exact, _ = rope_cos_sin(600, 112, torch.device("cpu"), torch.float32, table_dtype=torch.float32)
    assert (cos - exact).abs().max() > 1.0  # the quirk is large on long key sequences


def test_training_noise_is_switchable() -> None:
    torch.manual_seed(0)
    head = L1RegressionActionHead(16, 7, 8, num_blocks=2)
    feats = torch.randn(2, 3, 10 + NUM_ACTION_QUERIES, 16)
    proprio = torch.randn(2, 16)
    head.train()
    assert not torch.equal(head(feats, proprio), head(feats, proprio))
    head.train_noise_std = 0.0
    torch.testing.assert_close(head(feats, proprio), head(feats, proprio))
    head.train_noise_std = 0.02
    head.eval()
    torch.testing.assert_close(head(feats, proprio), head(feats, proprio))
    assert head(feats, proprio).shape == (2, 8, 7)


def test_gradient_checkpointing_recomputes_to_the_same_gradients() -> None:
    """`enable_gradient_checkpointing` turns on recomputation in the LLM and both ViTs (through the non-deprecated
    transformers API) and changes neither the loss nor the gradients."""
    from prismatic.assets.tiny_vlm import init_vlm
    from prismatic.models.batch import random_batch

    batch = random_batch(2, generator=torch.Generator().manual_seed(0))
    results = []
    for checkpointed in (False, True):
        torch.manual_seed(0)  # the action head is initialised from the global generator
        vlm = init_vlm(TINY, seed=0)
        vlm.set_num_images(2)
        policy = VLAAdapterPolicy(vlm, LIBERO_CONSTANTS).train()
        if checkpointed:
            with warnings.catch_warnings():
                warnings.simplefilter("error", FutureWarning)  # no deprecated transformers API
                vlm.enable_gradient_checkpointing()
            assert any(getattr(module, "gradient_checkpointing", False) for module in vlm.language_model.modules())
        loss = (policy(batch, noise_seed=0).actions - batch.actions).abs().mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in policy.parameters() if p.grad is not None]))
    (loss_plain, grads_plain), (loss_checkpointed, grads_checkpointed) = results
    torch.testing.assert_close(loss_checkpointed, loss_plain)
    assert len(grads_plain) == len(grads_checkpointed) > 0
    for plain, checkpointed in zip(grads_plain, grads_checkpointed, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)
