#!/usr/bin/env python3
"""Writes a random checkpoint with google/gemma-3-270m's published shape, in BF16, into a folder:
the model of the time-to-first-token benchmark (issue 9). Not run by CI; no tokenizer (the
benchmark passes prompt ids).

  /work/refvenv/bin/python bench/make_gemma3_270m.py OUT_DIR [--seed 0] [--config-form hub|current]

Shape (the hub's config.json): hidden 640, 18 layers (5 sliding : 1 full), 4 heads, 1 kv head,
head_dim 256, intermediate 2048, vocab 262144, sliding window 512, rope theta 1e4 local / 1e6
global, query_pre_attn_scalar 256, max_position_embeddings 32768, tied embeddings: 268 M
parameters, 536 MB. `--config-form hub` (default) writes config.json the way the published model
has it (layer_types next to rope_theta / rope_local_base_freq / rope_scaling null, torch_dtype);
`current` writes what transformers 5.24 saves (rope_parameters per layer type).

Values: matrices N(0, 1/fan_in), Gemma norm weights N(0, 0.5) (multiplier 1 + w), embedding
N(0, 1/hidden), from a fixed seed; built tensor by tensor from a meta-device model (no 1 GB f32
copy, no HF init), so it takes seconds.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
from safetensors.torch import save_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig

NUM_LAYERS = 18
LAYER_TYPES = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(NUM_LAYERS)]


def config_270m():
    return Gemma3TextConfig(
        vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=512, layer_types=LAYER_TYPES, max_position_embeddings=32768,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
        rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=True,
        attn_logit_softcapping=None, final_logit_softcapping=None,
    )


def hub_form(cfg):
    """config.json as google/gemma-3-270m publishes it."""
    rope = cfg.pop("rope_parameters")
    cfg.pop("_sliding_window_pattern", None)
    cfg["rope_theta"] = rope["full_attention"]["rope_theta"]
    cfg["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    cfg["rope_scaling"] = None
    cfg["torch_dtype"] = cfg.pop("dtype", "bfloat16")
    return cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-form", choices=["hub", "current"], default="hub")
    args = parser.parse_args()
    t0 = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    config = config_270m()
    with torch.device("meta"):
        model = Gemma3ForCausalLM(config)
    gen = torch.Generator().manual_seed(args.seed)
    tensors = {}
    # named_parameters() lists a tied weight once: the embedding, never lm_head.weight.
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim == 1:
            value = noise * 0.5
        elif "embed_tokens" in name:
            value = noise / math.sqrt(p.shape[1])
        else:
            value = noise / math.sqrt(math.prod(p.shape[1:]))
        tensors[name] = value.to(torch.bfloat16).contiguous()
    assert "lm_head.weight" not in tensors
    path = os.path.join(args.out_dir, "model.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    config.architectures = ["Gemma3ForCausalLM"]
    config.dtype = torch.bfloat16
    cfg = config.to_diff_dict()
    if args.config_form == "hub":
        cfg = hub_form(cfg)
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    GenerationConfig.from_model_config(config).save_pretrained(args.out_dir)
    params = sum(t.numel() for t in tensors.values())
    print(json.dumps({"out_dir": args.out_dir, "params": params, "bytes": os.path.getsize(path),
                      "seconds": round(time.perf_counter() - t0, 2)}))


if __name__ == "__main__":
    sys.exit(main())
