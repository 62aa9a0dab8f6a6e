#!/usr/bin/env python3
"""Random-weight models of real shapes for benchmarks (not committed; nothing downloaded).

    python scripts/make_bench_models.py gemma-100m OUT_DIR     # Gemma-shaped, ~100M parameters, F32
    python scripts/make_bench_models.py paligemma-3b OUT_DIR   # PaliGemma-3B-224 shape, BF16 files
"""
import sys

import torch

torch.manual_seed(0)
kind, out = sys.argv[1], sys.argv[2]
if kind == "gemma-100m":
    from transformers import GemmaConfig, GemmaForCausalLM
    cfg = GemmaConfig(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=9,
                      num_attention_heads=12, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048)
    model = GemmaForCausalLM(cfg)
    model.save_pretrained(out)
elif kind == "paligemma-3b":
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration
    cfg = PaliGemmaConfig(
        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                           patch_size=14, image_size=224, vision_use_head=False),
        text_config=dict(model_type="gemma", hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                         num_attention_heads=8, num_key_value_heads=1, head_dim=256, vocab_size=257216,
                         max_position_embeddings=8192),
        image_token_index=257152, projection_dim=2048, hidden_size=2048)
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.save_pretrained(out, max_shard_size="2GB")
else:
    raise SystemExit(__doc__)
print("parameters:", sum(p.numel() for p in model.parameters()))
