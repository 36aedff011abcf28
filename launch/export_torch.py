#!/usr/bin/env python3
"""Export an lctx checkpoint to PyTorch.

    python3 launch/export_torch.py CHECKPOINT.h5 OUT.pt [--safetensors OUT.safetensors]

Needs `pip install torch h5py numpy` (and `safetensors` for --safetensors); lctx itself does not.

Reads an lctx-train checkpoint (HDF5: /params/<name> f32 at global shapes, root attribute
`config` = the resolved YAML of the run), builds the PyTorch model below from that config, loads
the weights and saves its state_dict (torch.save) and, optionally, a safetensors file whose
metadata holds the model arguments as JSON (key "lctx_model_args").

The model is exactly what lctx-train computes (trainers/model.cpp):

    tokens -> embedding -> N x [ x += attention(rmsnorm(x)); x += swiglu_mlp(rmsnorm(x)) ]
           -> rmsnorm -> head (tied to the embedding or not) -> logits

Only `model.mixers` = softmax layers are supported (other kinds are an error naming the key).
Attention (mixers/attention_core.cpp, mixers/softmax.cpp): a fused projection wqkv
[(H + 2 Hkv) hd, D] whose output rows are the H query heads, then the Hkv key heads, then the Hkv
value heads; optional QK-norm (RMSNorm over head_dim, weights shared by the heads, eps =
model.norm_eps) before RoPE; RoPE with half-split pairing (GPT-NeoX / HF Llama: element i rotates
with element i + hd/2, angle pos * theta^(-2i/hd)), ALiBi (score -= slope_h |pos_q - pos_k|) or
none; causal softmax of scale mixer.softmax.softmax_scale (0: 1/sqrt(hd)), optional sliding
window mixer.softmax.window (a token sees itself and the window - 1 before it); GQA (query head h
reads KV head h // (H / Hkv)); output projection wo [D, H hd]. MLP: w_gate_up [2F, D] whose first
F output rows are the gate and the last F the up projection (lib/ops/swiglu.h),
silu(gate) * up, then w_down [D, F].

state_dict names (lctx checkpoint name -> PyTorch name):
    embedding                -> embedding.weight              [V, D]
    layers.<i>.attn_norm     -> layers.<i>.attn_norm.weight   [D]
    layers.<i>.wqkv          -> layers.<i>.attn.wqkv.weight   [(H + 2 Hkv) hd, D]
    layers.<i>.wo            -> layers.<i>.attn.wo.weight     [D, H hd]
    layers.<i>.q_norm        -> layers.<i>.attn.q_norm.weight [hd]   (QK-norm only)
    layers.<i>.k_norm        -> layers.<i>.attn.k_norm.weight [hd]   (QK-norm only)
    layers.<i>.mlp_norm      -> layers.<i>.mlp_norm.weight    [D]
    layers.<i>.w_gate_up     -> layers.<i>.mlp.w_gate_up.weight [2F, D]
    layers.<i>.w_down        -> layers.<i>.mlp.w_down.weight  [D, F]
    final_norm               -> final_norm.weight             [D]
    head                     -> head.weight                   [V, D]   (untied only; tied: the
                                                                         head is embedding.weight)

Loading the export elsewhere (this file is importable):

    from export_torch import LctxModel, ModelArgs
    args = ModelArgs.from_checkpoint("runs/x/checkpoints/step-00000100.h5")  # or .from_config_yaml(text)
    model = LctxModel(args); model.load_state_dict(torch.load("model.pt"))
    logits = model(tokens)                   # tokens: int [B, S]; positions default to 0..S-1
    loss = model.loss(tokens, targets)       # mean cross-entropy over targets != -1
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

import torch
import torch.nn.functional as F
from torch import nn


# ---- the config ------------------------------------------------------------------------------

def parse_lctx_yaml(text: str) -> dict:
    """The resolved config lctx-train writes (trainers/config.cpp, to_yaml): nested block
    mappings, two spaces per level, one `key: value` per line; values are scalars or flow
    lists `[a, b]`. Returns {"model.dim": "64", "model.mixers": ["softmax"], ...} (text values)."""
    out, stack = {}, []  # stack: (indent, key) of the open mappings
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value = value.strip()
        path = ".".join([k for _, k in stack] + [key.strip()])
        if not value:
            stack.append((indent, key.strip()))
        elif value.startswith("["):
            out[path] = [v.strip().strip("'\"") for v in value.strip("[]").split(",") if v.strip()]
        else:
            out[path] = value.strip("'\"")
    return out


def _bool(s: str) -> bool:
    if s.lower() in ("true", "yes", "on", "1"):
        return True
    if s.lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"not a boolean: {s!r}")


@dataclasses.dataclass
class ModelArgs:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    position: str          # rope | alibi | none
    rope_theta: float
    norm_eps: float
    tied_embeddings: bool
    qk_norm: bool
    softmax_scale: float   # 0: 1/sqrt(head_dim)
    window: int            # 0: every earlier token

    @staticmethod
    def from_config_yaml(text: str) -> "ModelArgs":
        c = parse_lctx_yaml(text)

        def get(key, default=None):
            if key in c:
                return c[key]
            if default is None:
                raise ValueError(f"lctx config: missing key {key}")
            return default

        mixers = get("model.mixers", ["softmax"])
        mixers = mixers if isinstance(mixers, list) else [mixers]
        n_layers = int(get("model.n_layers"))
        for i, kind in enumerate(mixers):
            if kind != "softmax":
                where = "model.mixers" if len(mixers) == 1 else f"model.mixers[{i}]"
                raise ValueError(f"{where} = {kind}: only softmax layers can be exported to PyTorch")
        dim, n_heads = int(get("model.dim")), int(get("model.n_heads"))
        n_kv = int(get("model.n_kv_heads", "0")) or n_heads
        hd = int(get("model.head_dim", "0")) or dim // n_heads
        ffn = int(get("model.ffn_dim", "0")) or ((8 * dim // 3 + 15) // 16) * 16
        position = get("model.position", "rope")
        if position not in ("rope", "alibi", "none"):
            raise ValueError(f"model.position = {position}: expected rope, alibi or none")
        return ModelArgs(
            vocab_size=int(get("model.vocab_size")), dim=dim, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=n_kv, head_dim=hd, ffn_dim=ffn, position=position,
            rope_theta=float(get("model.rope_theta", "10000")), norm_eps=float(get("model.norm_eps", "1e-5")),
            tied_embeddings=_bool(get("model.tied_embeddings", "true")),
            qk_norm=_bool(get("mixer.softmax.qk_norm", "false")),
            softmax_scale=float(get("mixer.softmax.softmax_scale", "0")),
            window=int(get("mixer.softmax.window", "0")))

    @staticmethod
    def from_checkpoint(path: str) -> "ModelArgs":
        import h5py
        with h5py.File(path, "r") as f:
            return ModelArgs.from_config_yaml(_attr_text(f.attrs["config"]))


def _attr_text(v) -> str:
    if hasattr(v, "tobytes"):
        v = v.tobytes()
    if isinstance(v, bytes):
        v = v.rstrip(b"\0").decode()
    return str(v)


# ---- the model -------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, positions, theta: float):
    """Half-split rotary embedding of x [B, S, heads, hd] at positions [S] or [B, S]."""
    hd = x.shape[-1]
    half = hd // 2
    inv_freq = torch.exp(-2.0 * torch.arange(half, dtype=torch.float64) / hd * math.log(theta))
    angle = positions.to(torch.float64)[..., None] * inv_freq          # [(B,) S, half]
    if angle.dim() == 2:
        angle = angle[None]
    cos, sin = angle.cos()[:, :, None, :].to(x.dtype), angle.sin()[:, :, None, :].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def alibi_slopes(heads: int) -> torch.Tensor:
    """The slopes of mixers/softmax.cpp: 2^(-8 (h+1) / p2) for the largest power of two p2 <= heads,
    then 2^(-4 (2h+1) / p2) for the heads beyond p2."""
    p2 = 1
    while p2 * 2 <= heads:
        p2 *= 2
    s = [2.0 ** (-8.0 * (h + 1) / p2) for h in range(p2)]
    h = 0
    while len(s) < heads:
        s.append(2.0 ** (-4.0 * (2 * h + 1) / p2))
        h += 1
    return torch.tensor(s, dtype=torch.float32)


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.a = a
        H, Hk, hd = a.n_heads, a.n_kv_heads, a.head_dim
        self.wqkv = nn.Linear(a.dim, (H + 2 * Hk) * hd, bias=False)
        self.wo = nn.Linear(H * hd, a.dim, bias=False)
        if a.qk_norm:
            self.q_norm = RMSNorm(hd, a.norm_eps)
            self.k_norm = RMSNorm(hd, a.norm_eps)
        if a.position == "alibi":
            self.register_buffer("alibi", alibi_slopes(H), persistent=False)

    def forward(self, x, positions):
        a = self.a
        B, S, _ = x.shape
        H, Hk, hd = a.n_heads, a.n_kv_heads, a.head_dim
        q, k, v = self.wqkv(x).view(B, S, H + 2 * Hk, hd).split([H, Hk, Hk], dim=2)
        if a.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if a.position == "rope":
            q, k = rope(q, positions, a.rope_theta), rope(k, positions, a.rope_theta)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))                  # [B, heads, S, hd]
        k, v = k.repeat_interleave(H // Hk, dim=1), v.repeat_interleave(H // Hk, dim=1)
        scale = a.softmax_scale if a.softmax_scale > 0 else 1.0 / math.sqrt(hd)
        scores = (q @ k.transpose(-1, -2)) * scale                         # [B, H, S, S]
        pos = positions if positions.dim() == 2 else positions[None]      # [B|1, S]
        dist = pos[:, :, None] - pos[:, None, :]                          # qpos - kpos
        if a.position == "alibi":
            scores = scores - self.alibi[None, :, None, None] * dist.abs()[:, None].to(scores.dtype)
        visible = dist >= 0
        if a.window > 0:
            visible = visible & (dist <= a.window - 1)
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
        o = torch.softmax(scores, dim=-1) @ v                              # [B, H, S, hd]
        return self.wo(o.transpose(1, 2).reshape(B, S, H * hd))


class SwiGLU(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.w_gate_up = nn.Linear(a.dim, 2 * a.ffn_dim, bias=False)     # rows [0, F): gate; [F, 2F): up
        self.w_down = nn.Linear(a.ffn_dim, a.dim, bias=False)

    def forward(self, x):
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.attn_norm = RMSNorm(a.dim, a.norm_eps)
        self.attn = Attention(a)
        self.mlp_norm = RMSNorm(a.dim, a.norm_eps)
        self.mlp = SwiGLU(a)

    def forward(self, x, positions):
        x = x + self.attn(self.attn_norm(x), positions)
        return x + self.mlp(self.mlp_norm(x))


class LctxModel(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.args = a
        self.embedding = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.n_layers))
        self.final_norm = RMSNorm(a.dim, a.norm_eps)
        if not a.tied_embeddings:
            self.head = nn.Linear(a.dim, a.vocab_size, bias=False)

    def forward(self, tokens, positions=None):
        """tokens int [B, S] -> logits [B, S, V]; positions: global positions [S] or [B, S]
        (RoPE, the causal/window mask and ALiBi), default 0..S-1."""
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x, positions)
        x = self.final_norm(x)
        w = self.embedding.weight if self.args.tied_embeddings else self.head.weight
        return F.linear(x, w)

    def loss(self, tokens, targets, positions=None):
        """Mean cross-entropy over the targets != -1 (lctx-train's loss)."""
        logits = self(tokens, positions)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1).long(),
                               ignore_index=-1)


# ---- checkpoint -> state_dict ----------------------------------------------------------------

def torch_name(lctx_name: str) -> str:
    """lctx parameter name -> LctxModel state_dict key (see the table at the top)."""
    parts = lctx_name.split(".")
    if len(parts) == 1:
        return lctx_name + ".weight"                       # embedding, final_norm, head
    if len(parts) == 3 and parts[0] == "layers":
        sub = {"wqkv": "attn.wqkv", "wo": "attn.wo", "q_norm": "attn.q_norm", "k_norm": "attn.k_norm",
               "w_gate_up": "mlp.w_gate_up", "w_down": "mlp.w_down"}.get(parts[2], parts[2])
        return f"layers.{parts[1]}.{sub}.weight"
    raise ValueError(f"unexpected parameter name {lctx_name!r}")


def load_checkpoint(path: str):
    """(ModelArgs, LctxModel with the checkpoint's weights, step)."""
    import h5py
    with h5py.File(path, "r") as f:
        if "params" not in f or "config" not in f.attrs:
            raise ValueError(f"{path}: not an lctx checkpoint (no /params group or no 'config' attribute)")
        args = ModelArgs.from_config_yaml(_attr_text(f.attrs["config"]))
        step = int(f.attrs["step"]) if "step" in f.attrs else -1
        params = {name: torch.from_numpy(f["params"][name][()]) for name in f["params"]}
    model = LctxModel(args)
    expected = model.state_dict()
    state = {}
    for name, t in params.items():
        key = torch_name(name)
        if key not in expected:
            raise ValueError(f"{path}: parameter {name} ({key}) has no place in the model built from its config")
        if tuple(t.shape) != tuple(expected[key].shape):
            raise ValueError(f"{path}: parameter {name} has shape {tuple(t.shape)}, the model expects "
                             f"{tuple(expected[key].shape)}")
        state[key] = t.to(torch.float32)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{path}: no parameters for {missing}")
    model.load_state_dict(state, strict=True)
    return args, model, step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export an lctx checkpoint (HDF5) to a PyTorch state_dict.")
    ap.add_argument("checkpoint", help="lctx checkpoint, e.g. runs/x/checkpoints/step-00000100.h5")
    ap.add_argument("out", help="output .pt (torch.save of the state_dict)")
    ap.add_argument("--safetensors", metavar="OUT.safetensors", help="also write a safetensors file")
    o = ap.parse_args(argv)
    try:
        args, model, step = load_checkpoint(o.checkpoint)
    except (ValueError, KeyError, OSError) as e:
        print(f"export_torch: error: {e}", file=sys.stderr)
        return 1
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, o.out)
    if o.safetensors:
        from safetensors.torch import save_file
        save_file(state, o.safetensors, metadata={"lctx_model_args": json.dumps(dataclasses.asdict(args)),
                                                  "lctx_step": str(step)})
    n = sum(v.numel() for v in state.values())
    print(f"export_torch: {o.checkpoint} (step {step}): {n} parameters in {len(state)} tensors -> {o.out}"
          + (f", {o.safetensors}" if o.safetensors else ""))
    print("export_torch: model args " + json.dumps(dataclasses.asdict(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
