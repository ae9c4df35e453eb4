"""The generation fast path over a DeepSeekV3: a latent KV cache, the absorbed decode step, packed weights.

nanoseek.model defines what a forward computes; this module computes the same thing for generation, one
step of new tokens at a time over a cache (docs/architecture.md §3.3-3.4):

* The cache holds, per token and layer, only MLA's normalized latent and rotated shared rope key side by
  side, [c^KV (kv_lora_rank) | k^R (qk_rope_head_dim)]. A step writes its new tokens' entries in place.
* Prefill (more than ABSORB_MAX_TOKENS new tokens per row) runs the model's own expanded attention
  (`MLA.forward` with a cache hook): latents are projected up to per-head keys and values, which is cheaper
  when many queries share them.
* Decode and speculative verification (up to ABSORB_MAX_TOKENS new tokens per row) run absorbed: W^UK
  moves into the query and W^UV onto the output, so attention reads the latent cache directly as one key
  and value shared by all heads, and the cache is never expanded.
* FFNs, experts and the output head use weights laid out for small matmuls (nanoseek.model.packed); the
  routed experts go through nanoseek.model.experts with those packed weights, which picks the
  generation implementation for the device and step size.

Derived weights: `InferenceModel` derives from the model's parameters the fused MLA input projection, W^UK
and W^UV per head, and the packed FFN, expert and head weights. They are built once and rebuilt by
`refresh()` when any parameter was reassigned, moved, cast or modified in place (an in-place op bumps its
version counter; fused AdamW does not, so the training loop bumps them after each step, and other code that
updates weights that way calls `refresh(force=True)`). A rebuild with unchanged shapes copies into the existing tensors, so graphs that
torch.compile traced over them stay valid and are not recompiled. Nothing checks for staleness inside a
step: the engine calls `refresh()` before each run of steps, and code that changes the weights while
generating (an RL trainer between rollouts) must leave that call to the engine or make it itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.model.experts import experts
from nanoseek.model.layers import compute_dtype
from nanoseek.model.mla import MLA
from nanoseek.model.packed import PackedExperts, PackedLinear, PackedMLP

# Up to this many new tokens per row a step runs absorbed (decode, speculative verification); longer steps
# (prefill) expand the latent into per-head K/V, which is cheaper once there are many queries (docs/architecture.md §3.4).
ABSORB_MAX_TOKENS = 8


# ---- planning a step over the cache ------------------------------------------------------------------------
@dataclass
class LatentStep:
    """Where one cached step writes its tokens and what they attend to; planned once per model step and
    shared by every layer. A new token at position p of batch row b is stored at cache[r_b, p] and attends to
    cache[r_b, 0..p], where r_b is b (the batch is the cache's first B rows) or row_index[b]."""

    batch: int  # B
    row_index: torch.Tensor | None  # [B] cache row of each batch row; None: rows 0..B-1
    rows: torch.Tensor  # [N] cache row of each stored token
    pos: torch.Tensor  # [N] its position
    select: torch.Tensor | None  # [N] index into the flattened [B*S] new tokens (None: all, in order)
    span: int  # attention reads cache[:, :span]
    mask: torch.Tensor | None  # bool, True = may attend; broadcastable to the scores of the chosen path
    causal: bool  # expanded path over the new tokens only with a causal mask (prefill from position 0)
    absorbed: bool
    rope2: tuple[torch.Tensor, torch.Tensor] | None = None  # absorbed path: rope_halves(cos, sin), [B, S, 1, d_r]

    def store(self, kv: torch.Tensor, new: torch.Tensor) -> None:
        """Write the new tokens' cache entries new [B, S, width] into kv [B, T_max, width]."""
        flat = new.reshape(-1, new.shape[-1])
        if self.select is not None:
            flat = flat[self.select]
        kv.index_put_((self.rows, self.pos), flat.to(kv.dtype))

    def context(self, kv: torch.Tensor) -> torch.Tensor:
        """The cache entries the step attends over: [B, span, width] (a view for rows 0..B-1, else a gather)."""
        if self.row_index is None:
            return kv[: self.batch, : self.span]
        return kv[self.row_index, : self.span]


def plan_step(positions: torch.Tensor, n_heads: int, valid: torch.Tensor | None = None, span: int | None = None,
              absorbed: bool | None = None, row_index: torch.Tensor | None = None) -> LatentStep:
    """Plan one cached step for new tokens at positions [B, S] (valid [B, S]: False marks right padding,
    which is computed but never stored). span: cache prefix to attend over (default max position + 1).
    row_index [B]: the cache row of each batch row (default: rows 0..B-1)."""
    B, S = positions.shape
    dev = positions.device
    if span is None:
        span = int(positions.max()) + 1
    if absorbed is None:
        absorbed = S <= ABSORB_MAX_TOKENS
    rows = (torch.arange(B, device=dev) if row_index is None else row_index).repeat_interleave(S)
    pos, select = positions.reshape(-1), None
    if valid is not None and not bool(valid.all()):
        select = valid.reshape(-1).nonzero().squeeze(1)
        rows, pos = rows[select], pos[select]
    causal = (not absorbed and span == S
              and bool((positions == torch.arange(S, device=dev)).all()))
    mask = None
    if not causal and not (absorbed and B == 1 and S == 1):  # one row, one token: everything up to span is visible
        visible = torch.arange(span, device=dev) <= positions.unsqueeze(-1)  # [B, S, span]
        if not absorbed:
            mask = visible.unsqueeze(1)  # [B, 1, S, span]
        elif S == 1:
            mask = visible.view(B, 1, 1, span)  # broadcast over the H query rows
        else:  # absorbed query rows are (token, head) pairs, token-major
            mask = visible[:, None, :, None, :].expand(B, 1, S, n_heads, span).reshape(B, 1, S * n_heads, span)
    return LatentStep(batch=B, row_index=row_index, rows=rows, pos=pos, select=select, span=span, mask=mask,
                      causal=causal, absorbed=absorbed)


class _CacheWrite:
    """MLA.forward's cache hook for an expanded step: store the new latents, attend over the cached context."""

    __slots__ = ("kv", "step")

    def __init__(self, kv: torch.Tensor, step: LatentStep):
        self.kv, self.step = kv, step

    def update(self, latent: torch.Tensor, k_rope: torch.Tensor):
        step = self.step
        step.store(self.kv, torch.cat((latent, k_rope), dim=-1))
        if step.causal:  # prefill from position 0: the new tokens are the whole context
            return latent, k_rope, None, True
        r = latent.shape[-1]
        ctx = step.context(self.kv)
        return ctx[..., :r].to(latent.dtype), ctx[..., r:].to(latent.dtype), step.mask, False


# ---- derived weights ---------------------------------------------------------------------------------------
@dataclass
class DecodeWeights:
    """An MLA layer's weights arranged for the absorbed step.

    in_proj fuses every projection of the layer input into one matmul: without query compression its rows
    are [q^C of all heads | q^R of all heads | k^R | c^KV] (q_proj and kv_a_proj_with_mqa), with it
    [c^Q | k^R | c^KV] and q_b's rows become [q^C of all heads | q^R of all heads]. Rope rows are reordered
    within each d_r block to [even rows | odd rows], so a rotation is x * cos2 + roll(x) * sin2 on
    [evens | odds] halves: the layout apply_rope produces and the cache holds.
    """

    in_proj: PackedLinear
    q_b: PackedLinear | None
    o_proj: PackedLinear
    w_uk: torch.Tensor  # [H, d_n, r_kv]: q^C_h -> latent space (W^UK_h^T q^C_h)
    w_uv: torch.Tensor  # [H, r_kv, d_v]: attended latent -> per-head value (W^UV_h)

    @classmethod
    def of(cls, attn: MLA) -> "DecodeWeights":
        H, dn, dr, r = attn.n_heads, attn.nope_dim, attn.rope_dim, attn.kv_lora_rank
        eo = torch.cat((torch.arange(0, dr, 2), torch.arange(1, dr, 2)))  # [evens | odds] row order
        kv_a = attn.kv_a_proj_with_mqa
        latent_w, krope_w = kv_a.weight.detach().split([r, dr])
        kv_bias = None
        if kv_a.bias is not None:
            lb, kb = kv_a.bias.detach().split([r, dr])
            kv_bias = [kb[eo], lb]

        def split_q(w: torch.Tensor) -> list[torch.Tensor]:  # [H*(dn+dr), in] -> [nope rows, rope rows (eo)]
            heads = w.detach().view(H, dn + dr, -1)
            return [heads[:, :dn].reshape(H * dn, -1), heads[:, dn:][:, eo].reshape(H * dr, -1)]

        if attn.q_lora_rank is None:
            in_w = torch.cat([*split_q(attn.q_proj.weight), krope_w[eo], latent_w])
            in_b = None if kv_bias is None else torch.cat([kv_bias[0].new_zeros(H * (dn + dr)), *kv_bias])
            q_b = None
        else:
            qa = attn.q_a_proj
            in_w = torch.cat([qa.weight.detach(), krope_w[eo], latent_w])
            in_b = None
            if kv_bias is not None or qa.bias is not None:
                qa_b = qa.bias.detach() if qa.bias is not None else in_w.new_zeros(attn.q_lora_rank)
                in_b = torch.cat([qa_b, *(kv_bias or [in_w.new_zeros(dr), in_w.new_zeros(r)])])
            q_b = PackedLinear(torch.cat(split_q(attn.q_b_proj.weight)))
        per_head = attn.kv_b_proj.weight.detach().view(H, dn + attn.v_dim, r)
        w_uk, w_uv = per_head.split([dn, attn.v_dim], dim=1)
        o = attn.o_proj
        return cls(PackedLinear(in_w, in_b), q_b, PackedLinear(o.weight, o.bias), w_uk.contiguous(),
                   w_uv.transpose(1, 2).contiguous())


@dataclass
class LayerWeights:
    attn: DecodeWeights
    mlp: PackedMLP | None = None  # dense layer
    experts: PackedExperts | None = None  # MoE layer: routed experts
    shared: PackedMLP | None = None  # MoE layer: shared experts, if any


@dataclass
class DerivedWeights:
    layers: list[LayerWeights]  # main decoder layers, then the MTP modules' layers
    head: PackedLinear
    draft_heads: dict[int, PackedLinear] = field(default_factory=dict)  # lm_head rows [0, n) by n


# ---- the fast path ---------------------------------------------------------------------------------------
class InferenceModel:
    """A DeepSeekV3 for generation: cached steps, absorbed decode, packed weights. Holds the model (no copy of
    its parameters beyond the derived layouts) and reads its live weights after each `refresh()`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.blocks = list(model.model.layers) + list(model.mtp)  # decoder layers, then MTP modules
        self.weights: DerivedWeights | None = None
        self._key = None
        self.refresh()

    @torch.inference_mode()
    def refresh(self, force: bool = False) -> bool:
        """Rebuild the derived weights if any parameter changed since the last build (cheap when none did), or
        always with force. Returns whether they were rebuilt."""
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.model.parameters())
        if key == self._key and not force:
            return False
        new = DerivedWeights(
            layers=[_layer_weights(b) for b in self.blocks],
            head=PackedLinear(self.model.lm_head.weight),
            draft_heads={n: self._draft_head(n) for n in (self.weights.draft_heads if self.weights else ())})
        if self.weights is None or not _copy_into(self.weights, new):
            for t in _leaves(new):  # their sizes never change: compiled steps need no guard on them
                if t is not None:
                    torch._dynamo.mark_static(t)
            self.weights = new
        self._key = key
        return True

    def _draft_head(self, n: int) -> PackedLinear:
        return PackedLinear(self.model.lm_head.weight.detach()[:n])

    # ---- steps -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward_cached(self, input_ids: torch.Tensor, kv: list[torch.Tensor], positions: torch.Tensor, *,
                       valid: torch.Tensor | None = None, span: int | None = None, absorbed: bool | None = None,
                       rope: tuple[torch.Tensor, torch.Tensor] | None = None, rows: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """One step over new tokens input_ids [B, S] at positions [B, S] with a latent cache.

        kv: one tensor [rows, T_max, kv_lora_rank + qk_rope_head_dim] per decoder layer; batch row b uses cache
        row rows[b] (default b). The new tokens' entries are written in place, and the token at position p
        attends to its cache row's positions 0..p (entries before the new tokens must already hold that row's
        earlier tokens). valid [B, S] marks right padding (False: not stored). absorbed: None picks the
        absorbed path for short steps (decode), expanded for prefill. rope: optional (cos, sin) tables
        indexed by position. Returns the final-normed hidden [B, S, d]; the logits are `logits()` of the
        rows the caller needs.
        """
        step = plan_step(positions, self.config.num_attention_heads, valid, span, absorbed, rows)
        h = self._embed(input_ids)
        cos, sin = self._rope(positions, compute_dtype(h), rope, step)
        for i, cache in enumerate(kv):
            h = self._block(i, h, cos, sin, cache, step)
        return self.model.model.norm(h)

    @torch.no_grad()
    def forward_mtp_cached(self, depth: int, h_prev: torch.Tensor, next_ids: torch.Tensor, kv: torch.Tensor,
                           positions: torch.Tensor, *, valid: torch.Tensor | None = None, span: int | None = None,
                           rope: tuple[torch.Tensor, torch.Tensor] | None = None, rows: torch.Tensor | None = None
                           ) -> torch.Tensor:
        """MTP module `depth` (1-based) over its own latent cache kv (docs/architecture.md §5.4): from the previous depth's hidden
        h_prev [B, S, d] at positions [B, S] (the main model's final-normed hidden for depth 1) and the tokens
        that follow them, next_ids [B, S]. Returns the shared_head-normed hidden: `logits()` of it gives the
        draft logits for the token after next_ids, and it stands in for h_prev when drafting further."""
        module = self.model.mtp[depth - 1]
        step = plan_step(positions, self.config.num_attention_heads, valid, span, row_index=rows)
        emb = self._embed(next_ids)
        cos, sin = self._rope(positions, compute_dtype(emb), rope, step)
        x = module.combine(h_prev, emb)
        return module.shared_head.norm(self._block(self.config.num_hidden_layers + depth - 1, x, cos, sin, kv, step))

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        # the lookup itself, not nn.Embedding's forward: compiled with dynamic shapes, the module's float
        # attributes (norm_type) became symbolic and made torch.compile trace the first graph twice
        return F.embedding(ids, self.model.model.embed_tokens.weight)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.weights.head(h)

    def draft_logits(self, h: torch.Tensor, n_vocab: int) -> torch.Tensor:
        """Logits over token ids [0, n_vocab) only: a speculative draft's cheaper output head. BPE assigns ids
        in merge order, so the low ids are the bytes and the most frequent merges (what drafts mostly get
        right); any draft distribution keeps the verified output exact, this one only costs a little
        acceptance for n_vocab / vocab_size of the head's work."""
        if n_vocab >= self.config.vocab_size:
            return self.logits(h)
        heads = self.weights.draft_heads
        if n_vocab not in heads:
            heads[n_vocab] = self._draft_head(n_vocab)
        return heads[n_vocab](h)

    # ---- pieces ----------------------------------------------------------------------------------------
    def _rope(self, positions, dtype, rope, step: LatentStep):
        if rope is None:
            cos, sin = self.model.rotary(positions, dtype)
        else:
            cos, sin = rope[0][positions], rope[1][positions]  # tables over all positions, made once by the caller
        if step.absorbed:
            step.rope2 = tuple(t.unsqueeze(-2) for t in rope_halves(cos, sin))
        return cos, sin

    def _block(self, i: int, x: torch.Tensor, cos, sin, kv: torch.Tensor, step: LatentStep) -> torch.Tensor:
        """Decoder layer i (main layers, then MTP modules) over its cache kv; the same math as DecoderLayer."""
        block, w = self.blocks[i], self.weights.layers[i]
        h = block.input_layernorm(x)
        if step.absorbed:
            x = x + absorbed_attention(block.self_attn, w.attn, h, kv, step)
        else:
            x = x + block.self_attn(h, cos, sin, cache=_CacheWrite(kv, step))
        h = block.post_attention_layernorm(x)
        if not block.is_moe:
            return x + w.mlp(h)
        moe = block.mlp
        flat = h.reshape(-1, h.shape[-1])
        weights, indices, _ = moe.gate(flat)  # the model's own routing: same choices, same weights
        out = experts(flat, weights, indices, moe.experts.gate_up_proj, moe.experts.down_proj, packed=w.experts)
        if w.shared is not None:
            out = out + w.shared(flat)
        return x + out.to(h.dtype).view(h.shape)


def absorbed_attention(attn: MLA, w: DecodeWeights, x: torch.Tensor, kv: torch.Tensor, step: LatentStep
                       ) -> torch.Tensor:
    """MLA for a few new tokens x [B, S, d] over the latent cache kv [B, T_max, r_kv + d_r], absorbed (docs/architecture.md §3.2):
    queries move into latent space through W^UK, attend over [latent | rope key] as a single MQA key, and the
    attended latent goes out through W^UV. Stores the new tokens' entries first."""
    B, S, _ = x.shape
    H, dn, dr, r = attn.n_heads, attn.nope_dim, attn.rope_dim, attn.kv_lora_rank
    y = w.in_proj(x)
    if attn.q_lora_rank is None:
        q_nope, rope_in, latent = y.split([H * dn, (H + 1) * dr, r], dim=-1)
    else:
        q_a, k_in, latent = y.split([attn.q_lora_rank, dr, r], dim=-1)
        q_nope, q_rope_in = w.q_b(attn.q_a_layernorm(q_a)).split([H * dn, H * dr], dim=-1)
        rope_in = torch.cat((q_rope_in, k_in), dim=-1)
    rope = rotate_halves(rope_in.reshape(B, S, H + 1, dr), *step.rope2)  # queries and the key at once
    step.store(kv, torch.cat((attn.kv_a_layernorm(latent), rope[:, :, H]), dim=-1))
    # q' = W^UK_h^T q^C_h for every head at once: [H, B*S, d_n] @ [H, d_n, r]
    q_lat = torch.bmm(q_nope.reshape(B * S, H, dn).transpose(0, 1), w.w_uk)
    q = torch.cat((q_lat.transpose(0, 1).view(B, S, H, r), rope[:, :, :H]), dim=-1).view(B, 1, S * H, r + dr)
    cache = step.context(kv).unsqueeze(1).to(q.dtype)  # [B, 1, span, r + d_r]: one key shared by all heads
    # The value is the latent, i.e. the key's first r columns. Passing the whole key as the value keeps q, k, v
    # one width (PyTorch's fused CPU kernel needs that); the extra d_r output columns are dropped.
    o = F.scaled_dot_product_attention(q, cache, cache, attn_mask=step.mask, scale=attn.scale)
    o = torch.bmm(o.view(B * S, H, r + dr)[..., :r].transpose(0, 1), w.w_uv)  # o_h = W^UV_h sum_s a_s c_s
    return w.o_proj(o.transpose(0, 1).reshape(B, S, H * attn.v_dim))


def rope_halves(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [..., d_r/2] -> cos2 = [cos | cos], sin2 = [-sin | sin] for rotate_halves."""
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def rotate_halves(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
    """apply_rope for input already laid out [evens | odds]: same rotation, same output layout."""
    return torch.addcmul(x * cos2, x.roll(x.shape[-1] // 2, dims=-1), sin2)


def _layer_weights(block: nn.Module) -> LayerWeights:
    w = LayerWeights(attn=DecodeWeights.of(block.self_attn))
    if not block.is_moe:
        w.mlp = PackedMLP(block.mlp)
    else:
        w.experts = PackedExperts(block.mlp.experts.gate_up_proj, block.mlp.experts.down_proj)
        if block.mlp.shared_experts is not None:
            w.shared = PackedMLP(block.mlp.shared_experts)
    return w


def _leaves(obj) -> list:
    if isinstance(obj, torch.Tensor) or obj is None:
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [x for o in obj for x in _leaves(o)]
    if isinstance(obj, dict):
        return [x for k in sorted(obj) for x in _leaves(obj[k])]
    names = getattr(obj, "__slots__", None) or getattr(obj, "__dataclass_fields__", None) or ()
    return [x for n in names for x in _leaves(getattr(obj, n))]


def _copy_into(old, new) -> bool:
    """Copy new's tensors into old's when both have the same structure, shapes and dtypes, so code compiled
    against old's tensors stays valid. Tensors that are the model's own parameters (layouts that need no
    copy) are shared, not copied."""
    a, b = _leaves(old), _leaves(new)
    if len(a) != len(b) or _structure(old) != _structure(new):
        return False
    pairs = []
    for x, y in zip(a, b):
        if x is None or y is None:
            if x is not y:
                return False
        elif x is not y:
            if isinstance(x, nn.Parameter) or isinstance(y, nn.Parameter):
                return False
            if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
                return False
            pairs.append((x, y))
    for x, y in pairs:
        x.copy_(y)
    return True


def _structure(obj):
    if isinstance(obj, torch.Tensor) or obj is None:
        return None
    if isinstance(obj, (tuple, list)):
        return (type(obj), tuple(_structure(o) for o in obj))
    if isinstance(obj, dict):
        return (dict, tuple((k, _structure(obj[k])) for k in sorted(obj)))
    names = getattr(obj, "__slots__", None) or getattr(obj, "__dataclass_fields__", None) or ()
    return (type(obj), tuple(_structure(getattr(obj, n)) for n in names))
