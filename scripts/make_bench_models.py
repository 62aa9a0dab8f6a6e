#!/usr/bin/env python3
"""Random-weight models of real shapes for benchmarks (not committed; nothing downloaded).

    python scripts/make_bench_models.py gemma-100m OUT_DIR     # Gemma-shaped, ~100M parameters, F32
    python scripts/make_bench_models.py gemma-2b OUT_DIR       # PaliGemma-3B's decoder (2.5B), BF16 files
    python scripts/make_bench_models.py paligemma-3b OUT_DIR   # PaliGemma-3B-224 shape, BF16 files
    python scripts/make_bench_models.py siglip-b16 OUT_DIR     # SigLIP-B/16-224 (203M), F32
    python scripts/make_bench_models.py clip-b32 OUT_DIR       # CLIP-B/32-224 (151M), F32
    python scripts/make_bench_models.py siglip-tiny OUT_DIR    # `vlm-zoo train --preset tiny` shape, F32
"""
import sys

import torch

torch.manual_seed(0)
kind, out = sys.argv[1], sys.argv[2]


def siglip(image, patch, width, layers, heads, text_len, vocab):
    from transformers import SiglipConfig, SiglipModel
    tower = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads)
    cfg = SiglipConfig(text_config=dict(tower, vocab_size=vocab, max_position_embeddings=text_len),
                       vision_config=dict(tower, image_size=image, patch_size=patch))
    return SiglipModel(cfg)


if kind == "gemma-100m":
    from transformers import GemmaConfig, GemmaForCausalLM
    cfg = GemmaConfig(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=9,
                      num_attention_heads=12, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048)
    model = GemmaForCausalLM(cfg)
elif kind == "gemma-2b":
    # The language model of PaliGemma-3B (Gemma-2B with PaliGemma's 257216-token vocabulary),
    # alone, for decoders that take no image (llama.cpp); made like paligemma-3b below.
    from transformers import GemmaConfig, GemmaForCausalLM
    cfg = GemmaConfig(vocab_size=257216, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                      num_attention_heads=8, num_key_value_heads=1, head_dim=256, max_position_embeddings=8192)
    with torch.device("meta"):
        model = GemmaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    model.tie_weights()  # to_empty unties lm_head; tied, it is neither filled nor saved
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
elif kind == "siglip-b16":
    model = siglip(224, 16, 768, 12, 12, 64, 32000)
elif kind == "siglip-tiny":
    model = siglip(32, 8, 64, 2, 4, 16, 1000)
elif kind == "clip-b32":
    from transformers import CLIPConfig, CLIPModel
    cfg = CLIPConfig(text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                      num_attention_heads=8, vocab_size=49408, max_position_embeddings=77),
                     vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, image_size=224, patch_size=32),
                     projection_dim=512)
    model = CLIPModel(cfg)
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
else:
    raise SystemExit(__doc__)
model.save_pretrained(out, max_shard_size="2GB")
print("parameters:", sum(p.numel() for p in model.parameters()))
