"""A PyTorch twin of the embedded V4 engine (policy/engine/).

The same architecture and equations as docs/embedded-engine.md ("The model,
equation by equation"), written as a full-sequence (training) forward:

  embedding with a tied output head (held in BF16, as the engine rounds it),
  RMSNorm, multi-query attention (one shared key = value entry per token) with
  RoPE on the last rope_dim dims, a sliding window, CSA (softmax-gated pooling
  of ratio-m blocks with a positional bias, lightning-indexer top-k), HCA (every
  completed block), one joint softmax over the window and the selected
  compressed entries, the RoPE rotate-back of each head's output, and MoE with
  top-K routing plus a shared expert, SwiGLU.

The engine's FP8/BF16/int4 storage of the KV entries and indexer keys is not
emulated: this is what `paddock-policy --exact-kv` computes. Weights are read
and written as the engine's safetensors files (same tensor names and shapes;
safetensors.py here, no extra package), so a file saved by `save()` is served
by `paddock-policy --weights FILE` or /update_weights_from_disk as it is.

    import twin
    model = twin.Twin.load("weights.safetensors")     # config from the file's metadata
    lp = model.token_logprobs(tokens)                  # lp[i] = log p(tokens[i+1] | tokens[:i+1])
    model.save("out.safetensors")
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field, asdict
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402


@dataclass
class Config:
    """policy/engine/config.{h,cc}: the fields and the tiny/small presets."""
    name: str = "tiny"
    vocab_size: int = 128815
    eos_token_id: int = 1
    d_model: int = 64
    n_heads: int = 4
    head_dim: int = 64
    rope_dim: int = 16
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    layers: List[str] = field(default_factory=lambda: ["csa", "hca", "csa", "hca"])
    csa_ratio: int = 4
    hca_ratio: int = 128
    window: int = 128
    index_heads: int = 4
    index_dim: int = 32
    index_topk: int = 16
    n_experts: int = 8
    experts_per_token: int = 2
    expert_ff: int = 64
    shared_ff: int = 128
    max_context: int = 262144

    @property
    def nope_dim(self) -> int:
        return self.head_dim - self.rope_dim

    def ratio_of(self, kind: str) -> int:
        return self.csa_ratio if kind == "csa" else self.hca_ratio if kind == "hca" else 0

    @staticmethod
    def preset(name: str) -> "Config":
        if name == "tiny":
            return Config()
        if name == "small":
            return Config(name="small", d_model=256, n_heads=8, head_dim=64, rope_dim=16,
                          layers=["window", "window", "csa", "hca", "csa", "hca"],
                          index_heads=8, index_dim=64, index_topk=64, n_experts=16,
                          experts_per_token=2, expert_ff=256, shared_ff=512)
        raise ValueError(f"unknown config {name!r} (tiny, small)")

    @staticmethod
    def from_json(j: dict) -> "Config":
        c = Config()
        for k, v in j.items():
            if hasattr(c, k) and not k.startswith("_"):
                setattr(c, k, type(getattr(c, k))(v) if not isinstance(v, list) else list(v))
        return c

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("norm_eps")  # not in the engine's ToJson
        return d


def tensor_specs(c: Config) -> Dict[str, List[int]]:
    """TensorSpecs(config): every tensor's name and shape (PyTorch Linear [out, in])."""
    d, hd, H = c.d_model, c.head_dim, c.n_heads
    s = {"embed.weight": [c.vocab_size, d]}
    for i, kind in enumerate(c.layers):
        p = f"layers.{i}."
        s[p + "attn_norm.weight"] = [d]
        s[p + "attn.wq"] = [H * hd, d]
        s[p + "attn.wkv"] = [hd, d]
        s[p + "attn.wo"] = [d, H * hd]
        m = c.ratio_of(kind)
        if kind != "window":
            s[p + "attn.compress.wgate"] = [hd, d]
            s[p + "attn.compress.pos_bias"] = [m, hd]
        if kind == "csa":
            s[p + "attn.indexer.wq"] = [c.index_heads * c.index_dim, d]
            s[p + "attn.indexer.wk"] = [c.index_dim, d]
            s[p + "attn.indexer.whead"] = [c.index_heads, d]
            s[p + "attn.indexer.compress.wgate"] = [c.index_dim, d]
            s[p + "attn.indexer.compress.pos_bias"] = [m, c.index_dim]
        s[p + "ffn_norm.weight"] = [d]
        s[p + "moe.router"] = [c.n_experts, d]
        if c.shared_ff > 0:
            s[p + "moe.shared.w1"] = [c.shared_ff, d]
            s[p + "moe.shared.w3"] = [c.shared_ff, d]
            s[p + "moe.shared.w2"] = [d, c.shared_ff]
        for e in range(c.n_experts):
            q = f"{p}moe.experts.{e}."
            s[q + "w1"] = [c.expert_ff, d]
            s[q + "w3"] = [c.expert_ff, d]
            s[q + "w2"] = [d, c.expert_ff]
    s["norm.weight"] = [d]
    return s


def bf16_round(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to the nearest BF16 (ties to even), kept as float32 (the engine's FloatToBf16)."""
    return x.to(torch.bfloat16).to(x.dtype)


def fp8_e4m3_round(x: torch.Tensor) -> torch.Tensor:
    """Round to FP8 E4M3 ("fn": 3 mantissa bits, min normal 2^-6, max 448, saturating),
    ties to even, kept as float."""
    a = x.abs()
    e = torch.floor(torch.log2(a.clamp(min=2.0 ** -6)))  # binade; subnormals share 2^-6's step
    step = torch.pow(2.0, e - 3)
    return (torch.round(x / step) * step).clamp(-448.0, 448.0)


def emulate_entries(v: torch.Tensor, nope: int) -> torch.Tensor:
    """The engine's stored entry, dequantized: dims [0, nope) FP8 E4M3 with one power-of-two
    scale per entry (the smallest 2^e with 448 * 2^e >= max|v|), the rest BF16. v: [N, h]."""
    n = v[:, :nope]
    amax = n.abs().amax(1, keepdim=True)
    e = torch.ceil(torch.log2(amax / 448.0))
    e = torch.where(torch.pow(2.0, e) * 448.0 < amax, e + 1, e)
    e = torch.where(torch.pow(2.0, e - 1) * 448.0 >= amax, e - 1, e)
    e = torch.where(amax > 0, e, torch.zeros_like(e))
    sc = torch.pow(2.0, e)
    return torch.cat([fp8_e4m3_round(n / sc) * sc, bf16_round(v[:, nope:])], 1)


def emulate_int4(k: torch.Tensor) -> torch.Tensor:
    """Indexer keys as the engine stores them: round(k / s) clamped to [-8, 7], s = max|k| / 7."""
    s = k.abs().amax(1, keepdim=True) / 7.0
    q = torch.round(k / torch.where(s > 0, s, torch.ones_like(s))).clamp(-8, 7)
    return q * s


class _Bf16Round(torch.autograd.Function):
    """BF16 rounding in the forward, identity in the backward (straight-through)."""

    @staticmethod
    def forward(ctx, x):
        return bf16_round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def _key(name: str) -> str:
    return name.replace(".", "__")  # nn.ParameterDict keys cannot hold dots


class Twin(nn.Module):
    def __init__(self, config: Config, tensors: Optional[Dict[str, torch.Tensor]] = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        # Emulate the engine's KV storage (no gradient through it): "entries" (FP8 + BF16
        # window and compressed entries), "index" (int4 indexer keys); empty: exact,
        # what paddock-policy --exact-kv computes. For measuring, not training.
        self.emulate = set()
        self.dtype = dtype
        specs = tensor_specs(config)
        self.params = nn.ParameterDict()
        for name, shape in specs.items():
            if tensors is not None:
                if name not in tensors:
                    raise ValueError(f"missing tensor {name!r}")
                t = tensors[name]
                if list(t.shape) != shape:
                    raise ValueError(f"tensor {name!r}: shape {list(t.shape)}, expected {shape}")
                t = t.to(torch.float32)
            else:
                t = torch.zeros(shape)
            self.params[_key(name)] = nn.Parameter(t.to(dtype).clone())
        if tensors is not None:
            extra = set(tensors) - set(specs)
            if extra:
                raise ValueError(f"unexpected tensors: {sorted(extra)[:5]}")
        # A vector and a scale shared by a class of tokens (the number tokens:
        # number_vector()), applied to their embedding rows: trained as two
        # parameters, baked into the rows on save. None until number_vector().
        self.class_rows: Optional[torch.Tensor] = None
        self.class_vec: Optional[nn.Parameter] = None
        self.class_log_scale: Optional[nn.Parameter] = None
        self.logit_log_scale: Optional[nn.Parameter] = None
        r = config.rope_dim
        self.register_buffer("inv_freq", torch.tensor(
            [config.rope_theta ** (-2.0 * i / r) for i in range(r // 2)], dtype=torch.float64),
            persistent=False)

    # --- weights files ---------------------------------------------------------
    @staticmethod
    def load(path: str, config: Optional[Config] = None, dtype=torch.float32) -> "Twin":
        tensors, meta = safetensors_io.load(path)
        if config is None:
            if "paddock.config" in meta:
                config = Config.from_json(json.loads(meta["paddock.config"]))
            else:
                raise ValueError(f"{path}: no paddock.config metadata; pass a config")
        return Twin(config, tensors, dtype)

    def number_vector(self, rows, vec_init: float = 0.0, log_scale_init: float = 0.0,
                      seed: int = 0) -> List[nn.Parameter]:
        """Gives the tokens `rows` (the number tokens) one shared, trainable vector added
        to their embedding rows (input and tied head alike) and one shared, trainable
        scale of the rows themselves: row' = exp(log_scale) * row + vec. The vector starts
        at zero, or random with `vec_init` times the rows' mean norm; the scale at
        exp(log_scale_init). With the embedding itself frozen, a number token never
        trained on still carries what the class learned (e.g. "this is a number to
        copy"). save() writes the resulting rows."""
        E = self.p("embed.weight")
        self.class_rows = torch.as_tensor(sorted(rows), dtype=torch.long, device=E.device)
        v = torch.zeros(self.config.d_model)
        if vec_init:
            g = torch.Generator().manual_seed(seed)
            v = torch.randn(self.config.d_model, generator=g)
            v *= vec_init * E.detach()[self.class_rows].norm(dim=1).mean().item() / v.norm()
        self.class_vec = nn.Parameter(v.to(E.device))
        self.class_log_scale = nn.Parameter(torch.tensor(float(log_scale_init), device=E.device))
        return [self.class_vec, self.class_log_scale]

    def logit_scale(self) -> nn.Parameter:
        """One trainable scalar multiplying the final norm's gain, i.e. every logit of the tied
        head: 1/temperature, learned (it starts at 1). A gain per dimension cannot learn
        "sharper everywhere" as directly: each of its entries follows its own gradient.
        save() writes the product into norm.weight, so the engine serves it as it is."""
        if self.logit_log_scale is None:
            self.logit_log_scale = nn.Parameter(torch.zeros((), device=self.p("norm.weight").device))
        return self.logit_log_scale

    def final_gain(self) -> torch.Tensor:
        g = self.p("norm.weight")
        return g if self.logit_log_scale is None else g * torch.exp(self.logit_log_scale)

    def embedding(self) -> torch.Tensor:
        """The embedding (= the tied output head) as the engine uses it: BF16-rounded, with
        the number rows scaled and shifted (number_vector)."""
        E = self.p("embed.weight")
        if self.class_vec is not None:
            rows = self.class_rows.to(E.device)
            new = E[rows] * torch.exp(self.class_log_scale) + self.class_vec[None, :]
            E = E.index_copy(0, rows, new.to(E.dtype))
        return _Bf16Round.apply(E)

    def save(self, path: str) -> None:
        """Like the engine's SaveSafetensors: embed.weight as BF16, the rest F32, atomically."""
        out = {}
        for name in tensor_specs(self.config):
            t = (self.embedding() if name == "embed.weight" else self.final_gain() if name == "norm.weight"
                 else self.params[_key(name)]).detach().cpu().to(torch.float32)
            out[name] = t.to(torch.bfloat16) if name == "embed.weight" else t
        safetensors_io.save(path, out, {"paddock.config": json.dumps(self.config.to_json()),
                                        "format": "pt"})

    def p(self, name: str) -> torch.Tensor:
        return self.params[_key(name)]

    # --- pieces ------------------------------------------------------------------
    def rms_norm(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # x / sqrt(mean(x^2) + eps) * g
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.config.norm_eps) * g

    def rope(self, v: torch.Tensor, pos: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Rotates dims (n+2j, n+2j+1) of the last axis by pos * theta^(-2j/r) (by -that if inverse).
        v: [..., T, h] with pos: [T] (broadcast over leading axes)."""
        n = self.config.nope_dim
        ang = pos.to(torch.float64)[:, None] * self.inv_freq[None, :]  # [T, r/2], in double as the engine
        c = torch.cos(ang).to(v.dtype)
        s = torch.sin(ang).to(v.dtype)
        if inverse:
            s = -s
        a = v[..., n::2]
        b = v[..., n + 1::2]
        ra = a * c - b * s
        rb = a * s + b * c
        rot = torch.stack([ra, rb], dim=-1).flatten(-2)
        return torch.cat([v[..., :n], rot], dim=-1)

    def pool(self, value: torch.Tensor, gate: torch.Tensor, bias: torch.Tensor, m: int) -> torch.Tensor:
        """Softmax-gated pooling per channel over each complete block of m tokens.
        value, gate: [T, k]; bias: [m, k] -> [T // m, k]."""
        nb = value.shape[0] // m
        v = value[: nb * m].reshape(nb, m, -1)
        z = gate[: nb * m].reshape(nb, m, -1) + bias[None]
        return (torch.softmax(z, dim=1) * v).sum(dim=1)

    def attention(self, i: int, kind: str, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        c = self.config
        T = u.shape[0]
        H, hd = c.n_heads, c.head_dim
        pre = f"layers.{i}.attn."
        q = (u @ self.p(pre + "wq").t()).reshape(T, H, hd).transpose(0, 1)  # [H, T, hd]
        q = self.rope(q, pos)
        kv = u @ self.p(pre + "wkv").t()  # [T, hd]
        emu = (lambda v: emulate_entries(v, c.nope_dim)) if "entries" in self.emulate else (lambda v: v)
        keys = [emu(self.rope(kv, pos))]  # window entries, RoPE at their positions
        # visible[t, j]: may query t attend to entry j
        tpos = pos[:, None]
        W = c.window
        win_ok = (pos[None, :] <= tpos) & (pos[None, :] > tpos - W) if W > 0 else \
            torch.zeros(T, T, dtype=torch.bool, device=u.device)
        masks = [win_ok]
        if kind != "window":
            m = c.ratio_of(kind)
            nb = T // m
            if nb > 0:
                gate = u @ self.p(pre + "compress.wgate").t()
                blocks = self.pool(kv, gate, self.p(pre + "compress.pos_bias"), m)  # [nb, hd]
                first = torch.arange(nb, device=u.device) * m
                blocks = emu(self.rope(blocks, first))
                done = (first + m - 1)[None, :] <= tpos  # [T, nb]: block complete by t
                if kind == "csa":
                    ik = u @ self.p(pre + "indexer.wk").t()
                    ig = u @ self.p(pre + "indexer.compress.wgate").t()
                    ikeys = self.pool(ik, ig, self.p(pre + "indexer.compress.pos_bias"), m)  # [nb, dI]
                    if "index" in self.emulate:
                        ikeys = emulate_int4(ikeys)
                    iq = (u @ self.p(pre + "indexer.wq").t()).reshape(T, c.index_heads, c.index_dim)
                    iw = u @ self.p(pre + "indexer.whead").t()  # [T, HI]
                    # I[t, b] = sum_j w[t, j] relu(q[t, j] . k[b])
                    dots = torch.einsum("thd,bd->thb", iq, ikeys)
                    score = (iw[:, :, None] * torch.relu(dots)).sum(1)  # [T, nb]
                    sel = self.select_topk(score.detach(), done, c.index_topk)
                    done = sel
                keys.insert(0, blocks)
                masks.insert(0, done)
        ent = torch.cat(keys, 0)  # [N, hd]: compressed blocks, then window entries
        mask = torch.cat(masks, 1)  # [T, N]
        s = torch.einsum("htd,nd->htn", q, ent) / math.sqrt(hd)
        s = s.masked_fill(~mask[None], float("-inf"))
        o = torch.softmax(s, dim=-1) @ ent  # [H, T, hd]
        o = self.rope(o, pos, inverse=True)
        o = o.transpose(0, 1).reshape(T, H * hd)
        return o @ self.p(pre + "wo").t()

    @staticmethod
    def select_topk(score: torch.Tensor, done: torch.Tensor, k: int) -> torch.Tensor:
        """Per query: every complete block if there are at most k, else the k best
        (ties: lower block first), as the engine's SelectBlocks."""
        T, nb = score.shape
        if nb <= k:
            return done
        s = score.masked_fill(~done, float("-inf"))
        order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
        sel = torch.zeros_like(done)
        sel.scatter_(1, order, True)
        few = done.sum(1, keepdim=True) <= k
        return torch.where(few, done, sel & done)

    def swiglu(self, x: torch.Tensor, pre: str) -> torch.Tensor:
        h = F.silu(x @ self.p(pre + "w1").t()) * (x @ self.p(pre + "w3").t())
        return h @ self.p(pre + "w2").t()

    def moe(self, i: int, u: torch.Tensor) -> torch.Tensor:
        c = self.config
        pre = f"layers.{i}.moe."
        logits = u @ self.p(pre + "router").t()  # [T, E]
        # top-K by logit, ties lower index (a stable descending sort)
        top = torch.sort(logits.detach(), dim=1, descending=True, stable=True).indices[:, : c.experts_per_token]
        w = torch.softmax(torch.gather(logits, 1, top), dim=1)  # [T, K]
        out = self.swiglu(u, pre + "shared.") if c.shared_ff > 0 else torch.zeros_like(u)
        for e in range(c.n_experts):
            hit = top == e  # [T, K]
            rows = hit.any(1).nonzero().flatten()
            if rows.numel() == 0:
                continue
            y = self.swiglu(u[rows], f"{pre}experts.{e}.")
            we = (w[rows] * hit[rows]).sum(1, keepdim=True)
            out = out.index_add(0, rows, we * y)
        return out

    # --- forward -----------------------------------------------------------------
    def hidden(self, tokens: torch.Tensor, E: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens [T] (one sequence from position 0) -> final normed hidden states [T, d].
        E: embedding() when the caller has it already (for the tied head): it is the
        whole table, rounded (and with number_vector's rows), so it is made once a pass."""
        c = self.config
        T = tokens.shape[0]
        pos = torch.arange(T, device=tokens.device)
        if E is None:
            E = self.embedding()
        x = E[tokens].to(self.dtype)
        for i, kind in enumerate(c.layers):
            x = x + self.attention(i, kind, self.rms_norm(x, self.p(f"layers.{i}.attn_norm.weight")), pos)
            x = x + self.moe(i, self.rms_norm(x, self.p(f"layers.{i}.ffn_norm.weight")))
        return self.rms_norm(x, self.final_gain())

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        E = self.embedding()  # the tied head, in BF16 like the engine
        return self.hidden(tokens, E) @ E.t()

    def token_logprobs(self, tokens, chunk: int = 512) -> torch.Tensor:
        """lp[i] = log p(tokens[i+1] | tokens[:i+1]) at temperature 1, for i in 0..T-2."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        E = self.embedding()
        h = self.hidden(tokens, E)[:-1]
        tgt = tokens[1:]
        out = []
        for s in range(0, h.shape[0], chunk):  # the vocabulary is large: logits a chunk at a time
            lg = h[s:s + chunk] @ E.t()
            out.append(torch.log_softmax(lg, dim=-1).gather(1, tgt[s:s + chunk, None]).squeeze(1))
        return torch.cat(out) if out else torch.zeros(0)
