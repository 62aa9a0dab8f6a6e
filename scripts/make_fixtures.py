#!/usr/bin/env python3
"""Builds the parity fixtures in tests/fixtures/ from tiny random-weight HF checkpoints.

Nothing is downloaded: every model is built from a config here, every weight re-randomised
(transformers' default init gives degenerate models: zero logit scale/bias, unit norms), saved
with save_pretrained, and run through transformers to record reference outputs. The Rust tests
read the checkpoints and `reference.safetensors` and need no Python.

    python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements.txt
    .venv/bin/python scripts/make_fixtures.py [siglip clip ...]

Pinned versions: scripts/requirements.txt. Re-running reproduces the files bit for bit on the
same versions (seeded).
"""

import json
import shutil
import string
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
IMAGES = FIX / "images"

CAPTIONS = [
    "a photo of a red circle",
    "a blue square on a white background",
    "two green triangles, side by side!",
    "A Yellow Star at the top left.",
    "an orange ring in the bottom right corner",
    "a purple cross and a grey dot",
    "the cat sat on the mat",
    "a dog running in a field of grass",
    "zero-shot classification with sigmoid scores",
    "a very long caption that goes on and on to test truncation of texts that are longer than the context",
]


def randomise(model, seed, scale=1.0):
    """Re-draws every parameter so that outputs depend on every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-1]
            if p.ndim >= 2 and "embedding" not in name and "probe" not in name:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) * scale / np.sqrt(fan_in))
            elif "norm" in name and leaf == "weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif leaf in ("bias", "in_proj_bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name == "logit_scale":
                p.copy_(torch.tensor(np.log(10.0) + 0.3).reshape(p.shape))
            elif name == "logit_bias":
                p.copy_(torch.tensor(-2.5).reshape(p.shape))
            else:  # embeddings, probe, class embedding, norm biases
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def make_images():
    """Small PNGs of several sizes and modes (RGB, non-square, grey, RGBA)."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    specs = [("rgb_64x48.png", (64, 48), "RGB"), ("rgb_23x37.png", (23, 37), "RGB"),
             ("grey_40x40.png", (40, 40), "L"), ("rgba_50x30.png", (50, 30), "RGBA"),
             ("rgb_300x200.png", (300, 200), "RGB")]
    for name, (w, h), mode in specs:
        base = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        # Smooth gradients plus shapes plus noise: resampling has something to do.
        yy, xx = np.mgrid[0:h, 0:w]
        base[..., 0] = (base[..., 0] // 4 + (xx * 191 // max(w - 1, 1))).astype(np.uint8)
        base[..., 1] = (base[..., 1] // 4 + (yy * 191 // max(h - 1, 1))).astype(np.uint8)
        img = Image.fromarray(base, "RGB")
        d = ImageDraw.Draw(img)
        d.ellipse([w // 5, h // 5, w // 2, h // 2], fill=(220, 30, 40))
        d.rectangle([w // 2, h // 2, w - 2, h - 2], fill=(20, 40, 230))
        if mode == "L":
            img = img.convert("L")
        elif mode == "RGBA":
            a = Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8), "L")
            img.putalpha(a)
        img.save(IMAGES / name)
    return [IMAGES / s[0] for s in specs]


def unigram_tokenizer(vocab_size, lowercase):
    """A SentencePiece-style Unigram tokenizer (Metaspace) that appends </s>, as SigLIP's does."""
    tok = Tokenizer(models.Unigram())
    norms = [normalizers.NFKC()]
    if lowercase:
        norms.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", shrinking_factor=0.75)
    corpus = CAPTIONS * 4 + [" ".join(string.ascii_lowercase), string.punctuation]
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok


def bpe_tokenizer(vocab_size):
    """A CLIP-style byte-level BPE tokenizer with <|startoftext|> ... <|endoftext|>."""
    tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>")
    tok.train_from_iterator(CAPTIONS * 4, trainer)
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    return tok


def save_tokenizer(tok, out, config):
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **config)
    fast.save_pretrained(out)
    return fast


def tensors_of(d):
    return {k: (v.detach().contiguous() if torch.is_tensor(v) else torch.tensor(v)) for k, v in d.items()}


def siglip_fixture(name, seed, vision, text, images, texts, lowercase=True):
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    out = FIX / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    tok = unigram_tokenizer(text["vocab_size"], lowercase)
    text = dict(text, pad_token_id=tok.token_to_id("<pad>"), eos_token_id=1)
    config = SiglipConfig(vision_config=vision, text_config=text)
    model = SiglipModel(config).eval()
    randomise(model, seed)
    model.save_pretrained(out)
    fast = save_tokenizer(tok, out, dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                         model_max_length=text["max_position_embeddings"]))
    proc = SiglipImageProcessorPil(size={"height": vision["image_size"], "width": vision["image_size"]},
                                   image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    proc.save_pretrained(out)
    pil = [Image.open(p) for p in images]
    pixel_values = torch.from_numpy(np.stack(proc(pil)["pixel_values"]))
    ids = fast(texts, padding="max_length", truncation=True, max_length=text["max_position_embeddings"],
               return_tensors="pt")["input_ids"]
    with torch.no_grad():
        o = model(input_ids=ids, pixel_values=pixel_values)
    ref = {
        "pixel_values": pixel_values, "input_ids": ids.to(torch.int64),
        "vision_last_hidden_state": o.vision_model_output.last_hidden_state,
        "vision_pooler_output": o.vision_model_output.pooler_output,
        "text_last_hidden_state": o.text_model_output.last_hidden_state,
        "text_pooler_output": o.text_model_output.pooler_output,
        "image_embeds": o.image_embeds, "text_embeds": o.text_embeds,
        "logits_per_image": o.logits_per_image, "probs": torch.sigmoid(o.logits_per_image),
    }
    save_file(tensors_of(ref), out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(
        {"images": [p.name for p in images], "texts": texts}, indent=1))


def siglip_vision_fixture(name, seed, vision, images):
    """A bare SiglipVisionModel (no head), as PaliGemma uses it."""
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    out = FIX / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    model = SiglipVisionModel(SiglipVisionConfig(**vision)).eval()
    randomise(model, seed)
    model.save_pretrained(out)
    proc = SiglipImageProcessorPil(size={"height": vision["image_size"], "width": vision["image_size"]},
                                   image_mean=[0.48, 0.46, 0.41], image_std=[0.27, 0.26, 0.28])
    proc.save_pretrained(out)
    pixel_values = torch.from_numpy(np.stack(proc([Image.open(p) for p in images])["pixel_values"]))
    with torch.no_grad():
        o = model(pixel_values=pixel_values)
    ref = {"pixel_values": pixel_values, "vision_last_hidden_state": o.last_hidden_state}
    if o.pooler_output is not None:
        ref["vision_pooler_output"] = o.pooler_output
    save_file(tensors_of(ref), out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps({"images": [p.name for p in images]}, indent=1))


def clip_fixture(name, seed, vision, text, projection_dim, images, texts, legacy_eos=False):
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    out = FIX / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    tok = bpe_tokenizer(text["vocab_size"])
    eos = tok.token_to_id("<|endoftext|>")
    bos = tok.token_to_id("<|startoftext|>")
    text = dict(text, eos_token_id=2 if legacy_eos else eos, bos_token_id=bos, pad_token_id=eos)
    config = CLIPConfig(vision_config=vision, text_config=text, projection_dim=projection_dim)
    model = CLIPModel(config).eval()
    randomise(model, seed)
    model.save_pretrained(out)
    fast = save_tokenizer(tok, out, dict(pad_token="<|endoftext|>", eos_token="<|endoftext|>",
                                         bos_token="<|startoftext|>", unk_token="<|endoftext|>",
                                         model_max_length=text["max_position_embeddings"]))
    size = vision["image_size"]
    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    proc.save_pretrained(out)
    pixel_values = torch.from_numpy(np.stack(proc([Image.open(p) for p in images])["pixel_values"]))
    enc = fast(texts, padding="longest", truncation=True, max_length=text["max_position_embeddings"],
               return_tensors="pt")
    with torch.no_grad():
        o = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixel_values)
    ref = {
        "pixel_values": pixel_values, "input_ids": enc["input_ids"].to(torch.int64),
        "attention_mask": enc["attention_mask"].to(torch.int64),
        "vision_last_hidden_state": o.vision_model_output.last_hidden_state,
        "vision_pooler_output": o.vision_model_output.pooler_output,
        "text_last_hidden_state": o.text_model_output.last_hidden_state,
        "text_pooler_output": o.text_model_output.pooler_output,
        "image_embeds": o.image_embeds, "text_embeds": o.text_embeds,
        "logits_per_image": o.logits_per_image, "probs": o.logits_per_image.softmax(dim=-1),
    }
    save_file(tensors_of(ref), out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(
        {"images": [p.name for p in images], "texts": texts}, indent=1))


def siglip_and_clip():
    imgs = make_images()
    texts = CAPTIONS[:4] + CAPTIONS[-1:]
    siglip_fixture(
        "siglip-a", 1,
        vision=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, layer_norm_eps=1e-6, vision_use_head=True),
        text=dict(vocab_size=160, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=16, layer_norm_eps=1e-6, projection_size=32),
        images=imgs[:4], texts=texts)
    siglip_fixture(
        "siglip-b", 2,
        vision=dict(image_size=28, patch_size=7, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                    num_attention_heads=3, layer_norm_eps=1e-5, hidden_act="gelu", vision_use_head=True),
        text=dict(vocab_size=200, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                  num_attention_heads=6, max_position_embeddings=12, layer_norm_eps=1e-5, hidden_act="gelu",
                  projection_size=48),
        images=imgs[1:], texts=texts[::-1])
    siglip_vision_fixture(
        "siglip-vision-nohead", 3,
        vision=dict(image_size=24, patch_size=4, hidden_size=24, intermediate_size=56, num_hidden_layers=2,
                    num_attention_heads=2, vision_use_head=False),
        images=imgs)
    clip_fixture(
        "clip-a", 4,
        vision=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4),
        text=dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=20),
        projection_dim=24, images=imgs[:4], texts=texts)
    clip_fixture(
        "clip-b", 5,
        vision=dict(image_size=30, patch_size=6, hidden_size=40, intermediate_size=56, num_hidden_layers=3,
                    num_attention_heads=5, hidden_act="gelu", layer_norm_eps=1e-6),
        text=dict(vocab_size=420, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=3, max_position_embeddings=12, hidden_act="gelu"),
        projection_dim=16, images=imgs[2:], texts=texts[1:], legacy_eos=True)


def gemma_tokenizer(vocab_size):
    """A Gemma-style tokenizer: <pad>=0 <eos>=1 <bos>=2 <unk>=3, BPE with byte fallback-free
    byte-level pieces, and a post-processor that prepends <bos>."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CAPTIONS * 4 + ["héllo wörld ✓ 日本"], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return tok


GEMMA_PROMPTS = ["a photo of a red circle", "two green triangles", "the cat sat on the mat and"]


def greedy_margin(model, ids, steps):
    """Generates greedily and returns (new ids, smallest top-1 minus top-2 logit gap)."""
    out = model.generate(ids, max_new_tokens=steps, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    gaps = [float((l.topk(2).values[0, 0] - l.topk(2).values[0, 1])) for l in out.logits]
    return out.sequences[0, ids.shape[1]:].tolist(), min(gaps)


def gemma_fixture(name, kind, config, seeds, steps=8):
    """Tiny Gemma / Gemma 2 causal LM; the first seed whose greedy steps all have a clear margin."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, GemmaConfig, GemmaForCausalLM
    cfg_cls, model_cls = (GemmaConfig, GemmaForCausalLM) if kind == "gemma" else (Gemma2Config, Gemma2ForCausalLM)
    out = FIX / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tok = gemma_tokenizer(config["vocab_size"])
    fast = save_tokenizer(tok, out, dict(pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"))
    for seed in seeds:
        torch.manual_seed(seed)
        model = model_cls(cfg_cls(**config, pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()
        randomise(model, seed)
        gens, margins = [], []
        for prompt in GEMMA_PROMPTS:
            ids = fast(prompt, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                g, m = greedy_margin(model, ids, steps)
            gens.append(g)
            margins.append(m)
        if min(margins) > 0.02:
            break
    else:
        raise SystemExit(f"{name}: no seed gave clear greedy margins")
    model.generation_config.eos_token_id = 1
    model.save_pretrained(out)
    ref, meta = {}, {"prompts": GEMMA_PROMPTS, "seed": seed, "min_margin": min(margins), "generated": gens}
    for i, prompt in enumerate(GEMMA_PROMPTS):
        ids = fast(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            o = model(input_ids=ids, output_hidden_states=True)
        ref[f"input_ids_{i}"] = ids.to(torch.int64)
        ref[f"logits_{i}"] = o.logits[0]
        ref[f"hidden_{i}"] = o.hidden_states[-1][0]
        ref[f"generated_{i}"] = torch.tensor(gens[i], dtype=torch.int64)
    save_file(tensors_of(ref), out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(meta, indent=1))


def gemma():
    gemma_fixture("gemma-mqa", "gemma", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, rope_theta=10000.0, max_position_embeddings=64), seeds=range(10, 40))
    gemma_fixture("gemma-gqa", "gemma", dict(
        vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, rope_theta=500.0, rms_norm_eps=1e-5, max_position_embeddings=48),
        seeds=range(40, 70))
    gemma_fixture("gemma2-a", "gemma2", dict(
        vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=20, sliding_window=4,
        attn_logit_softcapping=5.0, final_logit_softcapping=8.0, rope_theta=10000.0,
        max_position_embeddings=64), seeds=range(70, 100))


def paligemma_tokenizer(image_last):
    """gemma_tokenizer plus <image> and the 1024 <locNNNN> + 128 <segNNN> tokens of PaliGemma's
    processor. PaliGemma 1 places <image> first (inside the vocabulary); PaliGemma 2 checkpoints put
    the image token at `vocab_size`, so with `image_last` it comes after the loc/seg tokens."""
    from tokenizers import AddedToken
    tok = gemma_tokenizer(300)
    extra = [f"<loc{i:0>4}>" for i in range(1024)] + [f"<seg{i:0>3}>" for i in range(128)]
    image = AddedToken("<image>", normalized=False, special=True)
    if not image_last:
        tok.add_special_tokens([image])
    tok.add_tokens(extra)
    if image_last:
        tok.add_special_tokens([image])
    return tok


PG_PROMPTS = [("rgb_64x48.png", "caption en"), ("rgb_23x37.png", "detect circle ; square")]


def paligemma_fixture(name, seed_range, text, image_last, vision=None, steps=6, variants=False):
    from transformers import (PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              PreTrainedTokenizerFast)
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    out = FIX / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    vision = vision or dict(image_size=28, patch_size=7, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, vision_use_head=False, layer_norm_eps=1e-6)
    n_img = (vision["image_size"] // vision["patch_size"]) ** 2
    tok = paligemma_tokenizer(image_last)
    image_id = tok.token_to_id("<image>")
    vocab = image_id if image_last else tok.get_vocab_size() + 7
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
    improc = SiglipImageProcessorPil(size={"height": vision["image_size"], "width": vision["image_size"]},
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3, image_seq_length=n_img)
    proc = PaliGemmaProcessor(image_processor=improc, tokenizer=fast)
    proc.save_pretrained(out)
    images = [Image.open(IMAGES / f) for f, _ in PG_PROMPTS]
    inputs = [proc(images=img, text=p, return_tensors="pt") for img, (_, p) in zip(images, PG_PROMPTS)]
    for seed in seed_range:
        torch.manual_seed(seed)
        cfg = PaliGemmaConfig(vision_config=vision, text_config=dict(text, vocab_size=vocab, pad_token_id=0,
                                                                      eos_token_id=1, bos_token_id=2),
                              image_token_index=image_id, projection_dim=text["hidden_size"],
                              hidden_size=text["hidden_size"], vocab_size=vocab)
        model = PaliGemmaForConditionalGeneration(cfg).eval()
        randomise(model, seed)
        gens, margins = [], []
        for x in inputs:
            with torch.no_grad():
                g = model.generate(**x, max_new_tokens=steps, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
            gens.append(g.sequences[0, x["input_ids"].shape[1]:].tolist())
            margins.append(min(float(l.topk(2).values[0, 0] - l.topk(2).values[0, 1]) for l in g.logits))
        if min(margins) > 0.02:
            break
    else:
        raise SystemExit(f"{name}: no seed gave clear greedy margins")
    model.generation_config.eos_token_id = 1
    model.save_pretrained(out)
    ref = {}
    for i, x in enumerate(inputs):
        with torch.no_grad():
            o = model(**x)
        ref[f"pixel_values_{i}"] = x["pixel_values"][0]
        ref[f"input_ids_{i}"] = x["input_ids"][0].to(torch.int64)
        ref[f"token_type_ids_{i}"] = x["token_type_ids"][0].to(torch.int64)
        ref[f"logits_{i}"] = o.logits[0]
        ref[f"generated_{i}"] = torch.tensor(gens[i], dtype=torch.int64)
    # Prefix + suffix (training layout): token_type_ids 1 on the suffix and its <eos>.
    xs = proc(images=images[0], text=PG_PROMPTS[0][1], suffix="a red circle", return_tensors="pt")
    with torch.no_grad():
        o = model(**{k: v for k, v in xs.items() if k != "labels"})
    ref["suffix_input_ids"] = xs["input_ids"][0].to(torch.int64)
    ref["suffix_token_type_ids"] = xs["token_type_ids"][0].to(torch.int64)
    ref["suffix_logits"] = o.logits[0]
    save_file(tensors_of(ref), out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(
        {"prompts": [p for _, p in PG_PROMPTS], "images": [f for f, _ in PG_PROMPTS], "seed": seed,
         "min_margin": min(margins), "generated": gens, "suffix": "a red circle"}, indent=1))
    if variants:
        paligemma_variants(out)


def paligemma_variants(src):
    """The same weights in the hub layout, sharded (vision_tower.vision_model.*, language_model.model.*),
    and as a BF16 copy in the `model.`-prefixed layout (model.vision_tower.*, model.language_model.*)."""
    from safetensors.torch import load_file as load_st
    tensors = load_st(src / "model.safetensors")
    side = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "processor_config.json", "special_tokens_map.json"]
    hub = src.parent / (src.name + "-hub-sharded")
    bf16 = src.parent / (src.name + "-bf16")
    for d in (hub, bf16):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        for f in side:
            if (src / f).exists():
                shutil.copy(src / f, d / f)

    # Fresh 5.x saves: vision_tower.*, multi_modal_projector.*, language_model.model.*.
    def hub_key(k):  # the hub layout of the original checkpoints
        return "vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k

    def model_key(k):  # the `model.`-prefixed layout of PaliGemmaModel-based saves
        if k.startswith("language_model.model."):
            return "model.language_model." + k[len("language_model.model."):]
        return "model." + k
    renamed = {hub_key(k): v.clone() for k, v in tensors.items()}
    keys = sorted(renamed)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate([keys[:half], keys[half:]]):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: renamed[k] for k in part}, hub / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    (hub / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    save_file({model_key(k): v.to(torch.bfloat16) for k, v in tensors.items()}, bf16 / "model.safetensors",
              metadata={"format": "pt"})


def paligemma():
    paligemma_fixture("paligemma-a", range(200, 240), text=dict(
        model_type="gemma", hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64), image_last=False, variants=True)
    paligemma_fixture("paligemma2-a", range(240, 280), text=dict(
        model_type="gemma2", hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
        attn_logit_softcapping=6.0, final_logit_softcapping=10.0, max_position_embeddings=64), image_last=True)


def grad_fixture(name):
    """Loss and the gradient of every parameter after one backward pass of the contrastive loss,
    for the first 4 image-text pairs of an existing SigLIP/CLIP fixture."""
    from safetensors.torch import load_file as load_st
    from transformers import AutoModel
    d = FIX / name
    model = AutoModel.from_pretrained(d).train()
    r = load_st(d / "reference.safetensors")
    kwargs = dict(pixel_values=r["pixel_values"][:4], input_ids=r["input_ids"][:4], return_loss=True)
    if "attention_mask" in r:
        kwargs["attention_mask"] = r["attention_mask"][:4]
    out = model(**kwargs)
    out.loss.backward()
    grads = {f"grad.{k}": p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    grads["loss"] = out.loss.detach().reshape(1)
    save_file(grads, d / "grads.safetensors")


def siglip_and_clip_all():
    siglip_and_clip()
    for name in ["siglip-a", "clip-a"]:
        grad_fixture(name)


FAMILIES = {"siglip": siglip_and_clip_all, "clip": siglip_and_clip_all, "gemma": gemma, "paligemma": paligemma}

if __name__ == "__main__":
    torch.set_num_threads(1)
    wanted = sys.argv[1:] or list(FAMILIES)
    done = set()
    for fam in wanted:
        fn = FAMILIES[fam]
        if fn not in done:
            fn()
            done.add(fn)
    print("fixtures written to", FIX)
