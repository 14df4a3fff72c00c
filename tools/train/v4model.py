"""DeepSeek-V4 in PyTorch for training the embedded model, written from ../../shared/spec (docs: spec sections).

One module serves two purposes:
* training: float32 parameters, whole sequences at once (every position sees what decode would see), the
  indexer learning from the attention it selects for, optional quantisation-aware fake quantisation;
* checking: `Numerics.reference()` switches on every rounding point of the reference (spec §16: bf16 casts,
  FP8 activation quantisation before FP8/FP4 GEMMs, FP8/FP4 cache simulation), so that held-out perplexity
  and greedy continuations computed here can be compared with dsv4 on the exported checkpoint.
`check_fixture.py` validates this module against the official golden fixture.

Runs on torch 1.13 (Debian 12, CPU) and current torch (GPU); float8 dtypes are not needed.
"""
import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Numerics:
    """Which reference rounding points are simulated. Each rounding passes gradients straight through."""
    bf16: bool = False          # bf16 casts of activations and bf16-stored weights
    act_quant: bool = False     # FP8 (e4m3, per-128, pow2 scale) activation quantisation at FP8/FP4 GEMMs
    cache_quant: bool = False   # FP8 window/compressed KV, FP4 indexer q/keys
    weight_quant: bool = False  # FP8 128x128 / FP4 1x32 weight fake quantisation (QAT)

    @staticmethod
    def reference():
        return Numerics(True, True, True, True)


def _ste(x, y):
    """Value of y, gradient of x."""
    return x + (y - x).detach()


def round_bf16(x):
    return _ste(x, x.to(torch.bfloat16).float())


def _pow2_ceil(v):
    """2^ceil(log2 v) on the IEEE bits, as the reference's ue8m0 scales (v > 0, normal)."""
    bits = v.float().view(torch.int32)
    exp = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).int()
    return torch.ldexp(torch.ones_like(v), exp)


def _round_float(x, mant_bits, min_exp):
    """Round to a float format with `mant_bits` mantissa bits whose smallest normal exponent is min_exp
    (RNE; the callers clamp to the format's range first)."""
    a = x.abs()
    e = torch.floor(torch.log2(torch.clamp(a, min=2.0 ** min_exp)))
    step = torch.exp2(e - mant_bits)
    return torch.round(x / step) * step  # torch.round is half-to-even


def fp8_round(x):
    return _round_float(x, 3, -6)


def fp4_round(x):
    return _round_float(x, 1, 0)


def block_quant(x, block, qmax, amin, rounder):
    """Quantise-dequantise the last dim in blocks with power-of-two scales (spec §10.3)."""
    shape = x.shape
    xb = x.reshape(*shape[:-1], shape[-1] // block, block)
    amax = torch.clamp(xb.detach().abs().amax(-1, keepdim=True), min=amin)
    s = _pow2_ceil(amax / qmax)
    q = rounder(torch.clamp(xb / s, -qmax, qmax)) * s
    return _ste(xb, q).reshape(shape)


def act_quant_fp8(x, block=128):
    return block_quant(x, block, 448.0, 1e-4, fp8_round)


def fp8_sim(x, block=64):
    """In-place FP8 simulation of cached KV: the result is rounded back to bf16 (exact here)."""
    return block_quant(x, block, 448.0, 1e-4, fp8_round)


def fp4_sim(x):
    return block_quant(x, 32, 6.0, 6 * 2.0 ** -126, fp4_round)


def weight_fp8(w):
    out_dim, in_dim = w.shape
    po, pi = -out_dim % 128, -in_dim % 128
    wp = F.pad(w, (0, pi, 0, po))
    blocks = wp.reshape(wp.shape[0] // 128, 128, wp.shape[1] // 128, 128)
    amax = torch.clamp(blocks.detach().abs().amax((1, 3), keepdim=True), min=1e-30)
    s = _pow2_ceil(amax / 448.0)
    q = (fp8_round(torch.clamp(blocks / s, -448, 448)) * s).reshape(wp.shape)[:out_dim, :in_dim]
    return _ste(w, q)


def weight_fp4(w):
    out_dim, in_dim = w.shape
    g = w.reshape(out_dim, in_dim // 32, 32)
    amax = torch.clamp(g.detach().abs().amax(-1, keepdim=True), min=1e-30)
    s = _pow2_ceil(amax / 6.0)
    return _ste(w, (fp4_round(torch.clamp(g / s, -6, 6)) * s).reshape(out_dim, in_dim))


def hadamard(x):
    """H_n x / sqrt(n), Sylvester ordering, over the last dim."""
    n = x.shape[-1]
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.reshape(-1, n // (2 * h), 2, h)
        y = torch.stack([y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]], 2)
        h *= 2
    return y.reshape(x.shape) / math.sqrt(n)


@dataclass
class Config:
    vocab_size: int
    dim: int
    n_layers: int
    n_hash_layers: int
    n_heads: int
    head_dim: int
    rope_head_dim: int
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    window: int
    compress_ratios: list
    n_routed_experts: int
    n_activated_experts: int
    moe_inter_dim: int
    route_scale: float
    swiglu_limit: float
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    rope_theta: float
    compress_rope_theta: float
    rope_factor: float
    original_seq_len: int
    beta_fast: float
    beta_slow: float
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    norm_eps: float = 1e-6
    bos_token_id: int = 0
    eos_token_id: int = 1

    @staticmethod
    def from_hf(c):
        r = c["rope_scaling"]
        return Config(
            vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
            n_hash_layers=c["num_hash_layers"], n_heads=c["num_attention_heads"], head_dim=c["head_dim"],
            rope_head_dim=c["qk_rope_head_dim"], q_lora_rank=c["q_lora_rank"], o_groups=c["o_groups"],
            o_lora_rank=c["o_lora_rank"], window=c["sliding_window"],
            compress_ratios=list(c["compress_ratios"][:c["num_hidden_layers"]]),
            n_routed_experts=c["n_routed_experts"], n_activated_experts=c["num_experts_per_tok"],
            moe_inter_dim=c["moe_intermediate_size"], route_scale=c["routed_scaling_factor"],
            swiglu_limit=c["swiglu_limit"], index_n_heads=c["index_n_heads"], index_head_dim=c["index_head_dim"],
            index_topk=c["index_topk"], rope_theta=c["rope_theta"], compress_rope_theta=c["compress_rope_theta"],
            rope_factor=r["factor"], original_seq_len=r["original_max_position_embeddings"],
            beta_fast=r["beta_fast"], beta_slow=r["beta_slow"], hc_mult=c["hc_mult"],
            hc_sinkhorn_iters=c["hc_sinkhorn_iters"], hc_eps=c["hc_eps"], norm_eps=c["rms_norm_eps"],
            bos_token_id=c["bos_token_id"], eos_token_id=c["eos_token_id"])


def rope_table(cfg, ratio, positions):
    """cos, sin [T, r_d/2] for the layer kind (spec §4.4)."""
    rd = cfg.rope_head_dim
    base = cfg.rope_theta if ratio == 0 else cfg.compress_rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, rd, 2, dtype=torch.float32) / rd))
    if ratio != 0:
        def corr(rot):
            return rd * math.log(cfg.original_seq_len / (rot * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(corr(cfg.beta_fast)), 0)
        high = min(math.ceil(corr(cfg.beta_slow)), rd - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(rd // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        freqs = freqs / cfg.rope_factor * ramp + freqs * (1 - ramp)
    angles = torch.outer(positions.float(), freqs)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin, inverse=False):
    """Rotate the interleaved pairs of the last r_d dims; cos/sin broadcast over x's leading dims."""
    rd = cos.shape[-1] * 2
    nope, rope = x[..., :-rd], x[..., -rd:]
    a, b = rope[..., 0::2], rope[..., 1::2]
    if inverse:
        sin = -sin
    ra, rb = a * cos - b * sin, a * sin + b * cos
    return torch.cat([nope, torch.stack([ra, rb], -1).flatten(-2)], -1)


class Linear(nn.Module):
    """A weight stored as `kind` ('fp8', 'fp4' or 'bf16') in the checkpoint. FP8 / FP4 weights run the
    reference's quantised GEMM (FP8 activations, bf16 output); bf16 ones an fp32 GEMM (compressor, router, head),
    and the one bf16-output GEMM (the indexer's weights_proj) rounds at its call site."""

    def __init__(self, in_dim, out_dim, kind, std=0.02):
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) * std)

    def effective_weight(self, num):
        w = self.weight
        if num.weight_quant and self.kind == "fp8":
            return weight_fp8(w)
        if num.weight_quant and self.kind == "fp4":
            return weight_fp4(w)
        if num.bf16 and self.kind in ("bf16", "fp8", "fp4"):
            return round_bf16(w)
        return w

    def forward(self, x, num):
        w = self.effective_weight(num)
        if self.kind in ("fp8", "fp4"):
            if num.act_quant:
                x = act_quant_fp8(x)
            y = F.linear(x, w)
            return round_bf16(y) if num.bf16 else y
        return F.linear(x, w)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x, num):
        w = round_bf16(self.weight) if num.bf16 else self.weight
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w
        return round_bf16(y) if num.bf16 else y


class Compressor(nn.Module):
    """Gated pooling of every m tokens into one KV entry (spec §5)."""

    def __init__(self, cfg, ratio, out_dim, rotate):
        super().__init__()
        self.m, self.c, self.rotate, self.overlap = ratio, out_dim, rotate, ratio == 4
        k = 2 if self.overlap else 1
        self.wkv = Linear(cfg.dim, k * out_dim, "bf16")
        self.wgate = Linear(cfg.dim, k * out_dim, "bf16")
        self.ape = nn.Parameter(torch.zeros(ratio, k * out_dim))
        self.norm = RMSNorm(out_dim, cfg.norm_eps)

    def forward(self, x, cos, sin, num):
        """x [B, T, D] -> entries [B, T // m, c] (entry j covers tokens jm .. jm+m-1)."""
        B, T, _ = x.shape
        m, c = self.m, self.c
        n = T // m
        if n == 0:
            return x.new_zeros(B, 0, c)
        width = self.ape.shape[1]
        a = self.wkv(x[:, :n * m], num).view(B, n, m, width)
        z = self.wgate(x[:, :n * m], num).view(B, n, m, width) + self.ape
        if self.overlap:
            prev_a = F.pad(a[:, :-1, :, :c], (0, 0, 0, 0, 1, 0))
            prev_z = F.pad(z[:, :-1, :, :c], (0, 0, 0, 0, 1, 0), value=float("-inf"))
            a = torch.cat([prev_a, a[..., c:]], 2)
            z = torch.cat([prev_z, z[..., c:]], 2)
        entries = (torch.softmax(z, 2) * a).sum(2)
        if num.bf16:
            entries = round_bf16(entries)
        entries = self.norm(entries, num)
        entries = apply_rope(entries, cos[0:n * m:m], sin[0:n * m:m])
        if num.bf16:
            entries = round_bf16(entries)
        if self.rotate:
            entries = hadamard(entries)
            if num.bf16:
                entries = round_bf16(entries)
            if num.cache_quant:
                entries = fp4_sim(entries)
        elif num.cache_quant:
            rd = cos.shape[-1] * 2
            entries = torch.cat([fp8_sim(entries[..., :-rd]), entries[..., -rd:]], -1)
        return entries


class Indexer(nn.Module):
    """Lightning indexer of CSA layers (spec §6)."""

    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.wq_b = Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, "fp8")
        self.weights_proj = Linear(cfg.dim, self.n_heads, "bf16")
        self.compressor = Compressor(cfg, 4, self.head_dim, rotate=True)

    def forward(self, x, q_r, cos, sin, num):
        """Scores [B, T, n] of every compressed entry for every token, -inf where not yet complete."""
        B, T, _ = x.shape
        q = self.wq_b(q_r, num).view(B, T, self.n_heads, self.head_dim)
        q = apply_rope(q, cos[:, None], sin[:, None])
        if num.bf16:
            q = round_bf16(q)
        q = hadamard(q)
        if num.bf16:
            q = round_bf16(q)
        if num.cache_quant:
            q = fp4_sim(q)
        keys = self.compressor(x, cos, sin, num)
        w = self.weights_proj(x, num)
        if num.bf16:  # a bf16 GEMM, then a bf16 product
            w = round_bf16(round_bf16(w) * (self.head_dim * self.n_heads) ** -0.5)
        else:
            w = w * (self.head_dim * self.n_heads) ** -0.5
        dots = torch.einsum("bthd,bnd->bthn", q, keys)
        if num.bf16:
            dots = round_bf16(dots)
            scores = round_bf16((round_bf16(F.relu(dots) * w[..., None])).sum(2))
        else:
            scores = (F.relu(dots) * w[..., None]).sum(2)
        n = keys.shape[1]
        visible = compressed_visibility(T, n, 4, x.device)
        return scores.masked_fill(~visible, float("-inf"))


def compressed_visibility(T, n, m, device):
    """[T, n]: entry j is complete at token t iff (j + 1) m <= t + 1."""
    t = torch.arange(T, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return (j + 1) * m <= t + 1


class Attention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.cfg = cfg
        self.ratio = cfg.compress_ratios[layer]
        H, d = cfg.n_heads, cfg.head_dim
        self.wq_a = Linear(cfg.dim, cfg.q_lora_rank, "fp8")
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
        self.wq_b = Linear(cfg.q_lora_rank, H * d, "fp8")
        self.wkv = Linear(cfg.dim, d, "fp8")
        self.kv_norm = RMSNorm(d, cfg.norm_eps)
        self.wo_a = Linear(H * d // cfg.o_groups, cfg.o_groups * cfg.o_lora_rank, "fp8")
        self.wo_b = Linear(cfg.o_groups * cfg.o_lora_rank, cfg.dim, "fp8", std=0.02 / math.sqrt(2 * cfg.n_layers))
        self.attn_sink = nn.Parameter(torch.zeros(H))
        if self.ratio:
            self.compressor = Compressor(cfg, self.ratio, d, rotate=False)
        self.indexer = Indexer(cfg) if self.ratio == 4 else None
        self.dense_compressed = False  # training warm-up: attend every complete entry while the indexer learns

    def forward(self, x, positions, num):
        """x [B, T, D] (normed) -> (out [B, T, D], indexer loss or None)."""
        cfg, B, T = self.cfg, x.shape[0], x.shape[1]
        H, d = cfg.n_heads, cfg.head_dim
        cos, sin = rope_table(cfg, self.ratio, positions)
        cos, sin = cos.to(x.device), sin.to(x.device)
        rb = round_bf16 if num.bf16 else (lambda t: t)

        q_r = self.q_norm(self.wq_a(x, num), num)
        q = self.wq_b(q_r, num).view(B, T, H, d)
        if num.bf16:  # per-head RMS scaling in bf16 arithmetic (spec §4.2, §17.1)
            ms = rb(rb(q * q).mean(-1, keepdim=True))
            q = rb(q * rb(torch.rsqrt(rb(ms + cfg.norm_eps))))
        else:
            q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)
        q = rb(apply_rope(q, cos[:, None], sin[:, None]))

        kv = rb(apply_rope(self.kv_norm(self.wkv(x, num), num), cos, sin))
        rd = cfg.rope_head_dim
        if num.cache_quant:
            kv = torch.cat([fp8_sim(kv[..., :-rd]), kv[..., -rd:]], -1)

        t = torch.arange(T, device=x.device)
        window = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - cfg.window)
        keys, allowed = kv, window[None].expand(B, T, T)
        index_loss = None
        if self.ratio:
            comp = self.compressor(x, cos, sin, num)
            n = comp.shape[1]
            visible = compressed_visibility(T, n, self.ratio, x.device)[None].expand(B, T, n)
            if self.indexer is not None and n > 0:
                scores = self.indexer(x.detach() if self.training else x, q_r.detach() if self.training else q_r,
                                      cos, sin, num)
                k = min(cfg.index_topk, n)
                top = torch.topk(scores.detach(), k, dim=-1).indices
                selected = torch.zeros_like(visible).scatter_(-1, top, True) & visible
                if self.training:
                    index_loss = self._indexer_loss(q, comp, scores, visible)
                if not self.dense_compressed:
                    visible = selected
            keys = torch.cat([kv, comp], 1)
            allowed = torch.cat([allowed, visible], -1)

        logits = torch.einsum("bthd,bsd->bhts", q, keys) / math.sqrt(d)
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
        sink = self.attn_sink.view(1, H, 1, 1)
        peak = logits.amax(-1, keepdim=True).detach()  # the sink does not enter the running max
        p = torch.exp(logits - peak)
        denom = p.sum(-1, keepdim=True) + torch.exp(sink - peak)
        o = torch.einsum("bhts,bsd->bthd", rb(p), keys) / denom.permute(0, 2, 1, 3)
        o = rb(apply_rope(rb(o), cos[:, None], sin[:, None], inverse=True))

        G = cfg.o_groups
        wo_a = self.wo_a.effective_weight(num).view(G, cfg.o_lora_rank, -1)
        z = rb(torch.einsum("btgk,grk->btgr", o.reshape(B, T, G, -1), wo_a)).reshape(B, T, -1)
        return self.wo_b(z, num), index_loss

    def _indexer_loss(self, q, comp, scores, visible):
        """KL from the main attention's distribution over the complete compressed entries (summed over
        heads, no gradient) to the indexer's softmax, as DeepSeek-V3.2's indexer warm-up trains it."""
        with torch.no_grad():
            att = torch.einsum("bthd,bnd->bhtn", q, comp) / math.sqrt(q.shape[-1])
            att = torch.softmax(att.masked_fill(~visible[:, None], float("-inf")), -1).nan_to_num(0).sum(1)
            target = att / att.sum(-1, keepdim=True).clamp(min=1e-9)
        # finite fill: a row with no complete entry must not turn the gradient into NaN
        logp = torch.log_softmax(scores.float().masked_fill(~visible, -1e9), -1).masked_fill(~visible, 0)
        rows = visible.any(-1)
        per_row = (target * (torch.log(target.clamp(min=1e-9)) - logp)).sum(-1)
        return per_row[rows].mean() if rows.any() else scores.sum() * 0


class Expert(nn.Module):
    def __init__(self, cfg, kind):
        super().__init__()
        self.w1 = Linear(cfg.dim, cfg.moe_inter_dim, kind)
        self.w3 = Linear(cfg.dim, cfg.moe_inter_dim, kind)
        self.w2 = Linear(cfg.moe_inter_dim, cfg.dim, kind, std=0.02 / math.sqrt(2 * cfg.n_layers))
        self.limit = cfg.swiglu_limit

    def forward(self, x, num, weight=None):
        g, u = self.w1(x, num), self.w3(x, num)
        if self.limit:
            u = torch.clamp(u, -self.limit, self.limit)
            g = torch.clamp(g, max=self.limit)
        a = F.silu(g) * u
        if weight is not None:
            a = a * weight
        if num.bf16:
            a = round_bf16(a)
        return self.w2(a, num)


class Gate(Linear):
    """Router weight plus either the hash table (first layers) or the balancing bias (spec §8.1). The bias
    is a buffer: aux-loss-free balancing moves it outside the optimiser."""

    def __init__(self, cfg, layer):
        super().__init__(cfg.dim, cfg.n_routed_experts, "bf16")
        if layer < cfg.n_hash_layers:
            g = torch.Generator().manual_seed(1000 + layer)
            table = torch.stack([torch.randperm(cfg.n_routed_experts, generator=g)[:cfg.n_activated_experts]
                                 for _ in range(cfg.vocab_size)])
            self.register_buffer("tid2eid", table)
        else:
            self.register_buffer("bias", torch.zeros(cfg.n_routed_experts))


class MoE(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.cfg = cfg
        self.hash = layer < cfg.n_hash_layers
        self.gate = Gate(cfg, layer)
        self.experts = nn.ModuleList(Expert(cfg, "fp4") for _ in range(cfg.n_routed_experts))
        self.shared_experts = Expert(cfg, "fp8")
        self.last_load = None

    def forward(self, x, ids, num):
        cfg = self.cfg
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        scores = torch.sqrt(F.softplus(self.gate(x, num)))
        if self.hash:
            idx = self.gate.tid2eid[ids.reshape(-1)]
        else:
            idx = torch.topk((scores + self.gate.bias).detach(), cfg.n_activated_experts, -1).indices
        w = scores.gather(-1, idx)
        w = w / w.sum(-1, keepdim=True) * cfg.route_scale
        y = torch.zeros_like(x)
        load = torch.bincount(idx.reshape(-1), minlength=cfg.n_routed_experts)
        self.last_load = load.detach()
        for e in range(cfg.n_routed_experts):
            tok, slot = torch.where(idx == e)
            if tok.numel():
                y = y.index_add(0, tok, self.experts[e](x[tok], num, w[tok, slot, None]))
        y = y + self.shared_experts(x, num)
        if num.bf16:
            y = round_bf16(y)
        return y.view(shape)


class HyperConnection(nn.Module):
    """mHC collapse / expansion around one sub-layer (spec §3)."""

    def __init__(self, cfg, n_out, with_mixing):
        super().__init__()
        hc, D = cfg.hc_mult, cfg.dim
        self.cfg, self.with_mixing = cfg, with_mixing
        self.fn = nn.Parameter(torch.randn(n_out, hc * D) * 0.01)
        self.base = nn.Parameter(torch.zeros(n_out))
        self.scale = nn.Parameter(torch.ones(3 if with_mixing else 1))

    def pre(self, h):
        """h [B, T, hc, D] -> (x [B, T, D], post [B, T, hc], comb [B, T, hc, hc])."""
        cfg, hc = self.cfg, self.cfg.hc_mult
        flat = h.flatten(-2)
        mu = F.linear(flat, self.fn) * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)
        pre = torch.sigmoid(self.scale[0] * mu[..., :hc] + self.base[:hc]) + cfg.hc_eps
        x = (pre[..., None] * h).sum(-2)
        if not self.with_mixing:
            return x, None, None
        post = 2 * torch.sigmoid(self.scale[1] * mu[..., hc:2 * hc] + self.base[hc:2 * hc])
        c = (self.scale[2] * mu[..., 2 * hc:] + self.base[2 * hc:]).view(*mu.shape[:-1], hc, hc)
        c = torch.softmax(c, -1) + cfg.hc_eps
        c = c / (c.sum(-2, keepdim=True) + cfg.hc_eps)
        for _ in range(cfg.hc_sinkhorn_iters - 1):
            c = c / (c.sum(-1, keepdim=True) + cfg.hc_eps)
            c = c / (c.sum(-2, keepdim=True) + cfg.hc_eps)
        return x, post, c

    @staticmethod
    def post(y, h, post, comb):
        return post[..., None] * y[..., None, :] + torch.einsum("btjk,btjd->btkd", comb, h)


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn = MoE(cfg, layer)
        self.hc_attn = HyperConnection(cfg, (2 + cfg.hc_mult) * cfg.hc_mult, True)
        self.hc_ffn = HyperConnection(cfg, (2 + cfg.hc_mult) * cfg.hc_mult, True)

    def forward(self, h, ids, positions, num, trace=None):
        rb = round_bf16 if num.bf16 else (lambda t: t)
        x, post, comb = self.hc_attn.pre(h)
        y, index_loss = self.attn(self.attn_norm(rb(x), num), positions, num)
        h = rb(HyperConnection.post(y, h, post, comb))
        if trace is not None:
            trace.update(h_mid=h, attn_out=y)
        x, post, comb = self.hc_ffn.pre(h)
        y = self.ffn(self.ffn_norm(rb(x), num), ids, num)
        if trace is not None:
            trace.update(ffn_out=y)
        return rb(HyperConnection.post(y, h, post, comb)), index_loss


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.hc_head = HyperConnection(cfg, cfg.hc_mult, False)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = Linear(cfg.dim, cfg.vocab_size, "bf16")

    def forward(self, ids, num):
        """ids [B, T] (positions 0..T-1) -> (fp32 logits [B, T, vocab], mean indexer loss)."""
        T = ids.shape[1]
        positions = torch.arange(T)
        e = self.embed(ids)
        if num.bf16:
            e = round_bf16(e)
        h = e[:, :, None, :].expand(-1, -1, self.cfg.hc_mult, -1)
        index_losses = []
        for layer in self.layers:
            h, index_loss = layer(h, ids, positions, num)
            if index_loss is not None:
                index_losses.append(index_loss)
        y, _, _ = self.hc_head.pre(h)
        if num.bf16:
            y = round_bf16(y)
        y = self.norm(y, num)
        logits = self.head(y, num)
        index_loss = torch.stack(index_losses).mean() if index_losses else None
        return logits, index_loss


def checkpoint_name(param_name):
    """The official tensor name of a parameter or buffer of this module (spec §10.4)."""
    return re.sub(r"hc_(attn|ffn|head)\.(fn|base|scale)$", r"hc_\1_\2", param_name)
