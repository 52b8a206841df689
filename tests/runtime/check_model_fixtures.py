#!/usr/bin/env python3
"""Checks the committed model fixtures with a second, independent implementation: plain torch
from config.json and model.safetensors, no transformers. It reads both config forms the way the
runtime must (issue 9, "Known traps"), so a pass says the fixtures encode exactly that math and
that the tolerances in fixtures/models/README.md hold for an implementation other than
transformers' own. Not run by CI (it needs torch and safetensors from PyPI):

    /work/refvenv/bin/python tests/runtime/check_model_fixtures.py [FIXTURE_DIR ...]

Prints one line per fixture and dtype; exits 1 if any f32 logit is more than 1e-4 off, any bf16
logit more than 0.5 off, or a greedy token differs.
"""
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "models"
TOLERANCE = {"f32": 1e-4, "bf16": 0.5}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


class Model:
    def __init__(self, folder):
        cfg = json.loads((folder / "config.json").read_text())
        self.prefix = "model."
        if "text_config" in cfg:  # Gemma3ForConditionalGeneration: the 4b-27b layout
            cfg, self.prefix = cfg["text_config"], "language_model.model."
        self.cfg = cfg
        self.weights = load_file(str(folder / "model.safetensors"))
        self.type = cfg["model_type"]
        self.gemma = self.type in ("gemma3_text", "gemma2")
        self.hidden = cfg["hidden_size"]
        self.heads, self.kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim = cfg.get("head_dim") or self.hidden // self.heads
        self.layers = cfg["num_hidden_layers"]
        self.layer_types = self._layer_types()
        self.inv_freq = [self._inv_freq(self._rope(t)) for t in self.layer_types]
        if self.gemma:
            self.scale = cfg["query_pre_attn_scalar"] ** -0.5
        else:
            self.scale = self.head_dim ** -0.5

    def _layer_types(self):
        cfg, n = self.cfg, self.layers
        if self.type == "qwen2" and not cfg.get("use_sliding_window", False):
            return ["full_attention"] * n  # a sliding_window next to use_sliding_window=false is unused
        if cfg.get("layer_types"):
            return cfg["layer_types"]
        if self.type == "gemma3_text":
            pattern = cfg.get("sliding_window_pattern", 6)
        elif self.type == "gemma2":
            pattern = 2
        else:
            return ["full_attention"] * n
        return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]

    def _rope(self, layer_type):
        cfg = self.cfg
        if "rope_parameters" in cfg:
            rope = cfg["rope_parameters"]
            return rope.get(layer_type, rope)
        if self.type == "gemma3_text":
            if layer_type == "sliding_attention":
                return {"rope_type": "default", "rope_theta": cfg.get("rope_local_base_freq", 10000.0)}
            # The older form's rope_scaling applies to the global layers only.
            return dict(cfg.get("rope_scaling") or {"rope_type": "default"}, rope_theta=cfg.get("rope_theta", 1e6))
        return dict(cfg.get("rope_scaling") or {"rope_type": "default"}, rope_theta=cfg["rope_theta"])

    def _inv_freq(self, rope):
        d = self.head_dim
        freq = 1.0 / rope["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind == "linear":
            freq = freq / rope["factor"]
        elif kind == "llama3":
            low, high = rope["low_freq_factor"], rope["high_freq_factor"]
            factor, original = rope["factor"], rope["original_max_position_embeddings"]
            wavelen = 2 * math.pi / freq
            smooth = (original / wavelen - low) / (high - low)
            scaled = torch.where(wavelen > original / low, freq / factor, freq)
            middle = (wavelen <= original / low) & (wavelen >= original / high)
            freq = torch.where(middle, (1 - smooth) * freq / factor + smooth * freq, scaled)
        elif kind != "default":
            raise ValueError(f"rope_type {kind}")
        return freq.float()

    def w(self, name):
        return self.weights[self.prefix + name]

    def norm(self, x, weight, dtype):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg["rms_norm_eps"])
        if self.gemma:
            return (y * (1.0 + weight.float())).to(dtype)  # Gemma: (1 + w), in f32
        return weight.to(dtype) * y.to(dtype)

    def linear(self, name, x, dtype):
        out = x @ self.w(name + ".weight").to(dtype).T
        bias = self.prefix + name + ".bias"
        return out + self.weights[bias].to(dtype) if bias in self.weights else out

    def rotate(self, x, positions, freq):
        angle = positions[:, None].float() * freq[None, :]
        cos, sin = torch.cos(angle).repeat(1, 2), torch.sin(angle).repeat(1, 2)
        half = self.head_dim // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin  # half-split

    def attention(self, i, h, positions, dtype):
        n, d, p = len(positions), self.head_dim, f"layers.{i}.self_attn."
        q = self.linear(p + "q_proj", h, dtype).view(n, self.heads, d).transpose(0, 1)
        k = self.linear(p + "k_proj", h, dtype).view(n, self.kv_heads, d).transpose(0, 1)
        v = self.linear(p + "v_proj", h, dtype).view(n, self.kv_heads, d).transpose(0, 1)
        if self.type == "gemma3_text":  # q/k norms over head_dim, before RoPE
            q, k = self.norm(q, self.w(p + "q_norm.weight"), dtype), self.norm(k, self.w(p + "k_norm.weight"), dtype)
        q = self.rotate(q, positions, self.inv_freq[i]).to(dtype)
        k = self.rotate(k, positions, self.inv_freq[i]).to(dtype)
        k = k.repeat_interleave(self.heads // self.kv_heads, 0)
        v = v.repeat_interleave(self.heads // self.kv_heads, 0)
        scores = (q @ k.transpose(1, 2)) * self.scale
        cap = self.cfg.get("attn_logit_softcapping")
        if self.type == "gemma2" and cap:  # Gemma 3 configs may carry it; Gemma 3 ignores it
            scores = torch.tanh(scores / cap) * cap
        allowed = positions[None, :] <= positions[:, None]
        if self.layer_types[i] == "sliding_attention":  # the last sliding_window positions, itself included
            allowed &= (positions[:, None] - positions[None, :]) < self.cfg["sliding_window"]
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")).float(), -1).to(dtype)
        out = (probs @ v).transpose(0, 1).reshape(n, self.heads * d)
        return self.linear(p + "o_proj", out, dtype)

    def mlp(self, i, h, dtype):
        p = f"layers.{i}.mlp."
        gate = self.linear(p + "gate_proj", h, dtype)
        act = F.gelu(gate, approximate="tanh") if self.gemma else F.silu(gate)
        return self.linear(p + "down_proj", act * self.linear(p + "up_proj", h, dtype), dtype)

    def forward(self, ids, dtype):
        positions = torch.arange(len(ids))
        x = self.w("embed_tokens.weight").to(dtype)[torch.tensor(ids)]
        if self.gemma:
            x = x * torch.tensor(math.sqrt(self.hidden)).to(dtype)  # rounded to the weights' dtype
        for i in range(self.layers):
            p = f"layers.{i}."
            a = self.attention(i, self.norm(x, self.w(p + "input_layernorm.weight"), dtype), positions, dtype)
            if self.gemma:
                x = x + self.norm(a, self.w(p + "post_attention_layernorm.weight"), dtype)
                m = self.mlp(i, self.norm(x, self.w(p + "pre_feedforward_layernorm.weight"), dtype), dtype)
                x = x + self.norm(m, self.w(p + "post_feedforward_layernorm.weight"), dtype)
            else:
                x = x + a
                x = x + self.mlp(i, self.norm(x, self.w(p + "post_attention_layernorm.weight"), dtype), dtype)
        x = self.norm(x, self.w("norm.weight"), dtype)
        head = self.weights.get("lm_head.weight", self.w("embed_tokens.weight"))  # tied: no lm_head
        logits = (x @ head.to(dtype).T).float()
        cap = self.cfg.get("final_logit_softcapping")
        return torch.tanh(logits / cap) * cap if cap else logits


def check(folder):
    model = Model(folder)
    expected = json.loads((folder / "expected.json").read_text())
    prompt = expected["prompt_ids"]
    ok = True
    for key, dtype in DTYPES.items():
        e = expected[key]
        with torch.no_grad():
            logits = model.forward(prompt + e["greedy_ids"][:-1], dtype)
        reference = torch.tensor(e["prompt_logits"] + e["step_logits"][1:])
        diff = float((logits - reference).abs().max())
        tokens = logits[len(prompt) - 1:].argmax(-1).tolist()
        good = diff <= TOLERANCE[key] and tokens == e["greedy_ids"]
        ok &= good
        print(f"{folder.name:18} {key:4} max |logit diff| {diff:.2e} (tolerance {TOLERANCE[key]:g}), "
              f"greedy tokens {'equal' if tokens == e['greedy_ids'] else 'DIFFER'}{'' if good else '  FAIL'}")
    return ok


def main():
    torch.set_num_threads(1)
    folders = [Path(a) for a in sys.argv[1:]] or sorted(p for p in FIXTURES.iterdir() if p.is_dir())
    results = [check(f) for f in folders]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
