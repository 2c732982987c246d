"""VLA-Adapter's Bridge-Attention L1-regression action head and the proprio projector.

Parameter names match the released checkpoints (`model.mlp_resnet_blocks.{i}.q_proj`, ...). The head starts from a
zero "action token" tensor (B, H, A * D) (plus N(0, 0.02) noise in training, switchable), and block i attends, in
one softmax, over: its own H rows, the adapter keys (ActionQuery features of LLM layer i+1 and the projected proprio
token), and the task keys (raw features of layer i+1) whose logits are scaled by tanh(gate) before the softmax.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prismatic.vla.constants import NUM_ACTION_QUERIES


class ProprioProjector(nn.Module):
    """Linear(P, D) - GELU - Linear(D, D): the proprio token of the action head (it never enters the LLM)."""

    def __init__(self, llm_dim: int, proprio_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(proprio)))


ROPE_TABLE_DTYPE = torch.bfloat16


def rope_cos_sin(
    seq_len: int,
    head_dim: int,
    device: torch.device,
    dtype: torch.dtype,
    base: float = 10000.0,
    table_dtype: torch.dtype = ROPE_TABLE_DTYPE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables laid out as cat([freqs, freqs]) over the head dimension (KEEP, see `rotate_interleaved`).

    KEEP: computed in bfloat16 by default. VLA-Adapter casts the whole head (its non-persistent `inv_freq` buffer
    included) to bf16 for training and inference, so its tables come from bf16 frequencies, bf16 positions (above
    256 they collapse: 255, 256, 256, 258, 260, 260, ...) and bf16 angles, cos and sin; the released heads were
    trained on those tables. `table_dtype=torch.float32` gives the exact tables.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    positions = torch.arange(seq_len, device=device, dtype=table_dtype)
    freqs = torch.einsum("i,j->ij", positions, inv_freq.to(table_dtype))
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_interleaved(vectors: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): rotation of interleaved pairs.

    KEEP: the released Pro heads pair dims (2i, 2i+1) here while `rope_cos_sin` lays frequencies out half-split;
    the mismatch is part of what the weights were trained with.
    """
    return torch.stack((-vectors[..., 1::2], vectors[..., ::2]), dim=-1).reshape_as(vectors)


def apply_rope(vectors: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """vectors: (B, heads, T, head_dim); cos/sin: (T, head_dim)."""
    return vectors * cos + rotate_interleaved(vectors) * sin


class BridgeAttentionBlock(nn.Module):
    """Original block: shared q/k/v/o projections for self, adapter and task keys."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.gating_factor = nn.Parameter(torch.zeros(1))

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        return tokens.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def attend(
        self, queries: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], task_scale: torch.Tensor
    ) -> torch.Tensor:
        """One softmax over [self, adapter, task] keys; task logits scaled by tanh(gate) before the softmax."""
        scores = [queries @ k.transpose(-2, -1) for k in keys]
        scores[2] = scores[2] * task_scale
        weights = torch.softmax(torch.cat(scores, dim=-1) / math.sqrt(self.head_dim), dim=-1)
        out = weights @ torch.cat(values, dim=2)
        batch, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)

    def forward(
        self, hidden: torch.Tensor, h_a: torch.Tensor, h_t: torch.Tensor, proprio: torch.Tensor | None
    ) -> torch.Tensor:
        adapter = h_a if proprio is None else torch.cat([h_a, proprio], dim=1)
        queries = self._heads(self.q_proj(hidden))
        keys = [self._heads(self.k_proj(s)) for s in (hidden, adapter, h_t)]
        values = [self._heads(self.v_proj(s)) for s in (hidden, adapter, h_t)]
        out = self.o_proj(self.attend(queries, keys, values, torch.tanh(self.gating_factor)))
        return self.ffn(out + hidden)


class BridgeAttentionBlockPro(BridgeAttentionBlock):
    """Pro block: separate key/value projections per source and RoPE (each source indexed from 0)."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        nn.Module.__init__(self)
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())
        self.q_proj = nn.Linear(dim, dim)
        self.k_self = nn.Linear(dim, dim)
        self.v_self = nn.Linear(dim, dim)
        self.k_adapter = nn.Linear(dim, dim)
        self.v_adapter = nn.Linear(dim, dim)
        self.k_task = nn.Linear(dim, dim)
        self.v_task = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.gating_factor = nn.Parameter(torch.zeros(1))
        # Unused by the forward pass; kept so that released Pro checkpoints load strictly (KEEP). Frozen, so that
        # DDP never waits for gradients it will not get.
        self.film_gen = nn.Sequential(nn.Linear(dim, dim * 2)).requires_grad_(False)

    def forward(
        self, hidden: torch.Tensor, h_a: torch.Tensor, h_t: torch.Tensor, proprio: torch.Tensor | None
    ) -> torch.Tensor:
        adapter = h_a if proprio is None else torch.cat([h_a, proprio], dim=1)
        queries = self._heads(self.q_proj(hidden))
        k_self, v_self = self._heads(self.k_self(hidden)), self._heads(self.v_self(hidden))
        k_adapter, v_adapter = self._heads(self.k_adapter(adapter)), self._heads(self.v_adapter(adapter))
        k_task, v_task = self._heads(self.k_task(h_t)), self._heads(self.v_task(h_t))
        cos, sin = rope_cos_sin(hidden.shape[1], self.head_dim, hidden.device, hidden.dtype)
        queries, k_self = apply_rope(queries, cos, sin), apply_rope(k_self, cos, sin)
        cos, sin = rope_cos_sin(adapter.shape[1], self.head_dim, hidden.device, hidden.dtype)
        k_adapter = apply_rope(k_adapter, cos, sin)
        cos, sin = rope_cos_sin(h_t.shape[1], self.head_dim, hidden.device, hidden.dtype)
        k_task = apply_rope(k_task, cos, sin)
        out = self.attend(
            queries, [k_self, k_adapter, k_task], [v_self, v_adapter, v_task], torch.tanh(self.gating_factor)
        )
        return self.ffn(self.o_proj(out) + hidden)


class MLPResNet(nn.Module):
    """LayerNorm - Linear - ReLU, one Bridge-Attention block per LLM layer (block i reads layer i+1), LN - Linear."""

    def __init__(
        self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int, use_pro_version: bool = True
    ) -> None:
        super().__init__()
        block = BridgeAttentionBlockPro if use_pro_version else BridgeAttentionBlock
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList([block(hidden_dim) for _ in range(num_blocks)])
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(
        self, hidden: torch.Tensor, h_a: torch.Tensor, h_t: torch.Tensor, proprio: torch.Tensor | None
    ) -> torch.Tensor:
        hidden = self.relu(self.fc1(self.layer_norm1(hidden)))
        for layer, block in enumerate(self.mlp_resnet_blocks):
            hidden = block(hidden, h_a=h_a[:, layer + 1], h_t=h_t[:, layer + 1], proprio=proprio)
        return self.fc2(self.layer_norm2(hidden))


class L1RegressionActionHead(nn.Module):
    """Predicts a normalised action chunk (B, chunk, action_dim) from stacked LLM features."""

    def __init__(
        self,
        llm_dim: int,
        action_dim: int,
        action_chunk: int,
        num_blocks: int,
        use_pro_version: bool = True,
        train_noise_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.llm_dim, self.action_dim, self.action_chunk = llm_dim, action_dim, action_chunk
        self.use_pro_version = use_pro_version
        self.train_noise_std = train_noise_std  # 0 disables the training-time input noise
        self.model = MLPResNet(num_blocks, llm_dim * action_dim, llm_dim, action_dim, use_pro_version)

    def forward(
        self, features: torch.Tensor, proprio_features: torch.Tensor | None = None, noise_seed: int | None = None
    ) -> torch.Tensor:
        """features: (B, L + 1, P + 64, D) task then ActionQuery features; proprio_features: (B, D) or None.

        `noise_seed` draws the training noise from its own generator (the trainer derives it from the step), so it
        does not depend on the global RNG, on the process count or on where a run was resumed.
        """
        if features.shape[1] < len(self.model.mlp_resnet_blocks) + 1:
            raise ValueError(
                f"the head has {len(self.model.mlp_resnet_blocks)} blocks but got features of only "
                f"{features.shape[1] - 1} LLM layers"
            )
        batch = features.shape[0]
        h_t, h_a = features[:, :, :-NUM_ACTION_QUERIES], features[:, :, -NUM_ACTION_QUERIES:]
        head_input = features.new_zeros(batch, self.action_chunk, self.action_dim * self.llm_dim)
        if self.training and self.train_noise_std > 0:
            # One draw shared by the batch, as in the original (KEEP); turn off with train_noise_std = 0.
            generator = None
            if noise_seed is not None:
                generator = torch.Generator(device=head_input.device).manual_seed(noise_seed)
            noise = torch.randn(
                head_input.shape[1:], device=head_input.device, dtype=head_input.dtype, generator=generator
            )
            head_input = head_input + noise * self.train_noise_std
        proprio = None if proprio_features is None else proprio_features.view(batch, 1, -1).to(features.dtype)
        return self.model(head_input, h_a=h_a, h_t=h_t, proprio=proprio)
