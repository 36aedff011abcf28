#!/usr/bin/env python3
"""Check launch/export_torch.py against lctx-train: the exported PyTorch model must give lctx's
loss on the same batch.

    python3 tests/export/check_export.py --lctx-train build/trainers/lctx-train [--workdir DIR]

For each config below it trains a tiny model for a few steps on the CPU (f32, one rank), dumps
the first eval batch and lctx's loss on it (`lctx-train ... --resume=CKPT --eval-batch B.h5`),
exports the checkpoint (launch/export_torch.py, .pt and .safetensors), runs the PyTorch model on
the batch and asserts

    |loss_torch - loss_lctx| <= 1e-4 * loss_lctx        (both computed in f32)

It also checks that the dump is the trainer's own evaluation (its loss is the last eval record of
metrics.jsonl, eval.batches = 1), that the safetensors file holds the same tensors, that a mixer
kind other than softmax is refused naming the key, and that the check has teeth: negative
controls (gate/up halves swapped, k/v swapped, GQA heads tiled, RoPE pairs interleaved, another
RoPE theta, no position encoding, naive ALiBi slopes, no window, no QK-norm, another scale; each
where the config uses it) must all FAIL the tolerance. The weights are drawn with init_std 0.3 so
that every one of these moves the loss well past it.

Configs: (a) RoPE (theta 500), GQA 4/2, untied head, byte text data (every token scored);
         (b) ALiBi over 6 heads (slopes beyond the power of two), GQA 6/3, QK-norm, tied
             embeddings, sliding window 16 of 64, softmax_scale 0.3, MQAR data (only the answers
             scored, targets -1 elsewhere).

Exit status: 0 passed, 1 failed, 77 skipped (python3 without torch, h5py or numpy: ctest's
SKIP_RETURN_CODE; CI machines need not have PyTorch).
"""
import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile

SKIP = 77
TOLERANCE = 1e-4  # relative, f32
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

try:
    import h5py
    import numpy  # noqa: F401  (h5py and torch.from_numpy need it)
    import torch
except ImportError as e:
    print(f"SKIP: check_export needs torch, h5py and numpy in {sys.executable} ({e}); "
          "pip install torch h5py numpy", flush=True)
    sys.exit(SKIP)

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(ROOT, "launch"))
import export_torch  # noqa: E402

COMMON = """
optimizer: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 2, weight_decay: 0.1}}
train: {{steps: {steps}, device: cpu, threads: 1}}
eval: {{every: 0, batches: 1}}
checkpoint: {{save_final: true}}
logging: {{out_dir: {out}, every: 100}}
"""

CONFIGS = {
    "rope-gqa-untied": """
model: {{vocab_size: 256, dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, position: rope, rope_theta: 500.0,
        tied_embeddings: false, init_std: 0.3}}
mixer: {{softmax: {{qk_norm: false}}}}
data: {{source: text, path: {text}, seq_len: 64, batch_size: 4, holdout: 0.1}}
""",
    "alibi-qknorm-tied-window": """
model: {{vocab_size: 48, dim: 48, n_layers: 2, n_heads: 6, n_kv_heads: 3, position: alibi, tied_embeddings: true, init_std: 0.3}}
mixer: {{softmax: {{qk_norm: true, window: 16, softmax_scale: 0.3}}}}
data: {{source: mqar, seq_len: 64, batch_size: 4, mqar: {{pairs: 6, queries: 6}}}}
""",
}


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}")
    return r.stdout


def write_text(path):
    """~24 KB of lowercase words, deterministic."""
    rng = random.Random(7)
    words = ["ring", "attention", "token", "context", "long", "shard", "zigzag", "rope", "the", "a", "of", "gpu"]
    with open(path, "w") as f:
        f.write(" ".join(rng.choice(words) for _ in range(4000)))


def torch_loss(model, batch):
    with torch.no_grad():
        return model.loss(torch.from_numpy(batch["inputs"][()]), torch.from_numpy(batch["targets"][()]),
                          torch.from_numpy(batch["positions"][()])).item()


def mutants(a):
    """What a wrong export could get wrong: {name: (ModelArgs, edit of the loaded model)}."""
    R = dataclasses.replace
    H, Hk, hd = a.n_heads, a.n_kv_heads, a.head_dim

    def keep(model):
        pass

    def weights(model, suffix):
        return [p for n, p in model.named_parameters() if n.endswith(suffix)]

    def swap_gate_up(model):
        for w in weights(model, "w_gate_up.weight"):
            w.copy_(torch.cat(w.detach().chunk(2, dim=0)[::-1]))

    def swap_k_v(model):  # wqkv rows: q heads, then k heads, then v heads
        for w in weights(model, "wqkv.weight"):
            q, k, v = w.detach().split([H * hd, Hk * hd, Hk * hd])
            w.copy_(torch.cat([q, v, k]))

    def gqa_tiled(model):
        # Query head h reading KV head h % Hkv (torch.repeat) instead of h // (H / Hkv): the same
        # as lctx's mapping on query heads reordered h -> (h % Hkv) * (H / Hkv) + h // Hkv.
        g = H // Hk
        order = torch.tensor([(h % Hk) * g + h // Hk for h in range(H)])
        for w in weights(model, "wqkv.weight"):
            heads = w.detach().view(H + 2 * Hk, hd, -1).clone()
            heads[:H] = heads[order]
            w.copy_(heads.view_as(w))

    def rope_interleaved(model):
        # Pairs (2i, 2i+1) instead of (i, i + hd/2): the same as half-split on q/k rows permuted
        # by [0, 2, 4, ..., 1, 3, 5, ...] within each head (q.k does not change under it).
        perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])
        for w in weights(model, "wqkv.weight"):
            heads = w.detach().view(H + 2 * Hk, hd, -1).clone()
            heads[:H + Hk] = heads[:H + Hk, perm]
            w.copy_(heads.view_as(w))
        for w in weights(model, "_norm.weight"):
            if w.shape[0] == hd and a.qk_norm:
                w.copy_(w.detach()[perm])

    def alibi_naive(model):  # 2^(-8 (h+1) / H) for every head: differs from lctx's when H is no power of 2
        for layer in model.layers:
            layer.attn.alibi = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)])

    m = {"gate/up swapped": (a, swap_gate_up), "k/v swapped": (a, swap_k_v),
         "GQA heads tiled": (a, gqa_tiled),
         "position none": (R(a, position="none"), keep),
         "scale 1/sqrt(hd)" if a.softmax_scale else "scale 1": (R(a, softmax_scale=0.0 if a.softmax_scale else 1.0), keep)}
    if a.position == "rope":
        m["rope interleaved"] = (a, rope_interleaved)
        m["rope theta 10000"] = (R(a, rope_theta=10000.0 if a.rope_theta != 10000.0 else 500.0), keep)
    if a.position == "alibi" and H & (H - 1):
        m["alibi slopes 2^(-8(h+1)/H)"] = (a, alibi_naive)
    if a.window:
        m["no window"] = (R(a, window=0), keep)
    if a.qk_norm:
        m["no qk_norm"] = (R(a, qk_norm=False), keep)
    return m


def check(name, template, lctx_train, work):
    out = os.path.join(work, name)
    cfg = os.path.join(work, name + ".yaml")
    with open(cfg, "w") as f:
        f.write(template.format(text=os.path.join(work, "text.txt")) + COMMON.format(steps=12, out=out))
    run([lctx_train, cfg])
    ckpt = os.path.join(out, "checkpoints", "step-00000012.h5")
    dump = os.path.join(work, name + "-batch.h5")
    run([lctx_train, cfg, "--resume=" + ckpt, "--eval-batch", dump])
    pt, st = os.path.join(work, name + ".pt"), os.path.join(work, name + ".safetensors")
    has_st = True
    try:
        import safetensors  # noqa: F401
    except ImportError:
        has_st = False
    run([sys.executable, os.path.join(ROOT, "launch", "export_torch.py"), ckpt, pt] + (["--safetensors", st] if has_st else []))

    # The model as a PyTorch user builds it: args from the checkpoint, weights from the export.
    args = export_torch.ModelArgs.from_checkpoint(ckpt)
    model = export_torch.LctxModel(args)
    model.load_state_dict(torch.load(pt), strict=True)
    model.eval()
    with h5py.File(dump, "r") as b:
        lctx_loss, scored = float(b.attrs["loss"]), int(b.attrs["scored"])
        loss = torch_loss(model, b)
        if has_st:  # the safetensors file holds the same tensors and the same model args
            from safetensors import safe_open
            from safetensors.torch import load_file
            sd = load_file(st)
            with safe_open(st, "pt") as f:
                meta_args = json.loads(f.metadata()["lctx_model_args"])
            assert meta_args == json.loads(json.dumps(args.__dict__)), (meta_args, args)
            assert sd.keys() == model.state_dict().keys()
            assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
        # Negative controls: each feature of the config changed in turn must move the loss.
        bad = {}
        for what, (m_args, edit) in mutants(args).items():
            m = export_torch.LctxModel(m_args)
            m.load_state_dict(model.state_dict(), strict=False)  # strict=False: "no qk_norm" has no q_norm
            with torch.no_grad():
                edit(m)
            bad[what] = torch_loss(m.eval(), b)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        eval_loss = [json.loads(l) for l in f if '"eval"' in l][-1]["loss"]

    diff = abs(loss - lctx_loss)
    print(f"{name}: lctx loss {lctx_loss:.9f} ({scored} scored targets), torch {loss:.9f}, "
          f"|diff| {diff:.3e} (tolerance {TOLERANCE * lctx_loss:.3e})", flush=True)
    print(f"  negative controls: " + ", ".join(f"{k} {v:.6f}" for k, v in bad.items()), flush=True)
    ok = True
    if not diff <= TOLERANCE * lctx_loss:
        print(f"FAIL {name}: |loss_torch - loss_lctx| = {diff} > {TOLERANCE} * {lctx_loss}")
        ok = False
    if not abs(eval_loss - lctx_loss) <= 1e-6 * lctx_loss:
        print(f"FAIL {name}: --eval-batch loss {lctx_loss} is not the run's eval loss {eval_loss}")
        ok = False
    for what, v in bad.items():
        if abs(v - lctx_loss) <= TOLERANCE * lctx_loss:
            print(f"FAIL {name}: the negative control '{what}' passed too: the check cannot see that difference")
            ok = False
    return ok


def check_unsupported():
    """A mixer kind other than softmax is an error naming the key."""
    text = "model:\n  vocab_size: 32\n  dim: 32\n  n_layers: 2\n  n_heads: 4\n  mixers: [softmax, mamba]\n"
    try:
        export_torch.ModelArgs.from_config_yaml(text)
    except ValueError as e:
        if "model.mixers[1]" in str(e) and "mamba" in str(e):
            print(f"unsupported mixer: {e}")
            return True
        print(f"FAIL unsupported mixer: the error does not name model.mixers[1]: {e}")
        return False
    print("FAIL unsupported mixer: model.mixers = [softmax, mamba] was accepted")
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lctx-train", required=True)
    ap.add_argument("--workdir", help="keep the runs here (default: a temporary directory)")
    o = ap.parse_args()
    torch.set_num_threads(1)
    results = [check_unsupported()]
    with tempfile.TemporaryDirectory(prefix="lctx-export-") as tmp:
        work = o.workdir or tmp
        os.makedirs(work, exist_ok=True)
        write_text(os.path.join(work, "text.txt"))
        for name, template in CONFIGS.items():
            try:
                results.append(check(name, template, o.lctx_train, work))
            except Exception as e:  # noqa: BLE001  (report and go on to the next config)
                print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
                results.append(False)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
