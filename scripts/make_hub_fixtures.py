#!/usr/bin/env python3
"""Builds fixtures shaped file for file like the hub repositories users download, which older
tools wrote (tests/fixtures/hub-*): tiny random weights, the real file sets and key sets.

- hub-siglip-base   google/siglip-base-patch16-224: minimal config.json (sizes only; every other
                    key is the config class default: text positions 64, eps 1e-6, tanh GELU, ...),
                    spiece.model (trained here with the sentencepiece package) and a SiglipTokenizer
                    tokenizer_config.json, no tokenizer.json; SiglipImageProcessor's
                    preprocessor_config.json of that time.
- hub-siglip-so400m google/siglip-so400m-patch14-384: image_size not a multiple of patch_size
                    (the stride-14 convolution floors), same tokenizer files.
- hub-siglip2       google/siglip2-base-patch16-224 (fixed resolution): model_type siglip, a Gemma-style
                    tokenizer.json (BPE with byte fallback) under Siglip2Tokenizer (lower-cases, pads
                    on the left), bilinear resizing.
- hub-siglip2-naflex google/siglip2-base-patch16-naflex: model_type siglip2, Linear patch embedding,
                    the position grid resized per image, images cut into at most max_num_patches
                    patches at their own aspect ratio (Siglip2ImageProcessor), padding masked.
- hub-clip-legacy   openai/clip-vit-base-patch32: the feature-extractor era preprocessor_config.json
                    (integer size / crop_size, CLIPFeatureExtractor), config.json with legacy
                    text ids (eos_token_id 2: pooled at the largest id) and the *_config_dict
                    copies, vocab.json + merges.txt + tokenizer.json, and pytorch_model.bin
                    beside model.safetensors (the tests also load it alone).

- hub-open-clip     laion/CLIP-ViT-*-laion2B-* as open_clip's save_for_hf writes it: open_clip_config.json
                    + open_clip_model.safetensors (visual.*, transformer.resblocks.*, packed
                    in_proj_weight, proj matrices), and the CLIP tokenizer.json (end-of-text as
                    its largest id, as open_clip's argmax pooling needs). The reference is
                    open_clip itself (its image transform, encode_image / encode_text).

References come from transformers loading each folder the way a user does (AutoProcessor /
from_pretrained, SigLIP texts padded with padding="max_length", CLIP with padding=True), with the
image processor on transformers' PIL backend (see pil_images).
`tokenizer_corpus.json` holds SiglipTokenizer's ids for a corpus with capitals, punctuation,
digits, unknown characters, non-ASCII text and odd whitespace.

    .venv/bin/python scripts/make_hub_fixtures.py [hub-siglip hub-siglip2 hub-siglip2-naflex hub-clip-legacy hub-open-clip]
    (pinned: scripts/requirements.txt, plus open_clip_torch for the OpenCLIP reference)
"""

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import CAPTIONS, FIX, IMAGES, bpe_tokenizer, make_images, randomise, tensors_of  # noqa: E402

SPM_CORPUS = CAPTIONS * 3 + [
    "The Quick Brown Fox Jumps Over The Lazy Dog 1234567890",
    "Ein schöner Tag am Meer, über den Wolken",
    "café crème brûlée naïve façade",
    "東京タワーの写真",
    "a photo of 3 dogs and 2 cats",
    "ＦＵＬＬＷＩＤＴＨ letters and ① circled digits",
]

CORPUS = [
    "a photo of a cat",
    "A Photo Of A CAT!!!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines  and   runs of spaces",
    "punctuation: (brackets), [square]; {curly} - dashes -- and 'quotes' \"double\"",
    "digits 0123456789 and 3.14159 and 1,000,000",
    "unknown characters: ☃ ★ 🙂 ∑ ∫",
    "Ein schöner Tag am Meer, über den Wolken",
    "CAFÉ crème brûlée NAÏVE",
    "東京タワーの写真",
    "ＦＵＬＬＷＩＤＴＨ letters and ① circled digits",
    "mixed CASE with İstanbul and ß",
    "",
    "!!!",
    "a▁word▁with▁the▁spiece▁underline",
    "text with an eos </s> in the middle",
    "a very long caption " * 12,
]


def pil_images(proc, out):
    """The processor with its image processor on transformers' PIL backend (the Pillow resampling
    vlm-zoo reproduces bit for bit; the default torchvision backend rounds some pixels one or two
    levels differently)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    cls = CLIPImageProcessorPil if "CLIP" in type(proc.image_processor).__name__ else SiglipImageProcessorPil
    proc.image_processor = cls.from_pretrained(out)
    return proc


def train_spiece(out_dir, vocab_size):
    """A Unigram SentencePiece model with SigLIP's special pieces: <pad>=0, </s>=1, <unk>=2."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_CORPUS), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=0.98, normalization_rule_name="nmt_nfkc", hard_vocab_limit=False,
        num_threads=1, seed_sentencepiece_size=2000, minloglevel=2)
    (out_dir / "spiece.model").write_bytes(buf.getvalue())


def siglip_tokenizer_files(out):
    special = lambda c: {"content": c, "lstrip": True, "normalized": False, "rstrip": True,  # noqa: E731
                         "single_word": False, "special": True}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": {"1": special("</s>"), "2": special("<unk>")},
        "additional_special_tokens": [], "clean_up_tokenization_spaces": True, "do_lower_case": True,
        "eos_token": "</s>", "model_input_names": ["input_ids"], "model_max_length": 64, "pad_token": "</s>",
        "processor_class": "SiglipProcessor", "sp_model_kwargs": {}, "tokenizer_class": "SiglipTokenizer",
        "unk_token": "<unk>"}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "eos_token": special("</s>"), "pad_token": special("</s>"), "unk_token": special("<unk>")}, indent=2))


def siglip_hub(name, seed, vision, text, images, texts, spiece_dir):
    from transformers import AutoProcessor, SiglipConfig, SiglipModel
    out = FIX / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy(spiece_dir / "spiece.model", out / "spiece.model")
    siglip_tokenizer_files(out)
    vocab = spm.SentencePieceProcessor(model_file=str(out / "spiece.model")).get_piece_size()
    text = dict(text, vocab_size=vocab)
    minimal = {
        "architectures": ["SiglipModel"], "initializer_factor": 1.0, "model_type": "siglip",
        "text_config": dict(text, model_type="siglip_text_model"), "torch_dtype": "float32",
        "transformers_version": "4.37.0.dev0", "vision_config": dict(vision, model_type="siglip_vision_model"),
    }
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    randomise(model, seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(minimal, indent=2))
    s = vision["image_size"]
    (out / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
        "size": {"height": s, "width": s}}, indent=2))
    # As a user: everything from the folder.
    model = SiglipModel.from_pretrained(out).eval()
    proc = pil_images(AutoProcessor.from_pretrained(out), out)
    enc = proc(text=texts, images=[Image.open(p) for p in images], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        o = model(input_ids=enc["input_ids"], pixel_values=enc["pixel_values"])
    ref = {"pixel_values": enc["pixel_values"], "input_ids": enc["input_ids"].to(torch.int64),
           "image_embeds": o.image_embeds, "text_embeds": o.text_embeds,
           "logits_per_image": o.logits_per_image, "probs": torch.sigmoid(o.logits_per_image)}
    save_file(tensors_of(ref), out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(
        {"images": [p.name for p in images], "texts": texts, "tokenizer": type(proc.tokenizer).__name__}, indent=1))
    return proc.tokenizer


def clip_legacy(name, seed, vision, text, projection_dim, images, texts):
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    out = FIX / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tok = bpe_tokenizer(text["vocab_size"])
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt, as the hub repo has them
    eot, sot = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|startoftext|>")
    text = dict(text, bos_token_id=0, eos_token_id=2, pad_token_id=1)  # the legacy ids of the original repo
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    model = CLIPModel(config).eval()
    randomise(model, seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    # The original repository also ships the PyTorch pickle (older repos have only that).
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, out / "pytorch_model.bin")
    full = config.to_dict()
    full.pop("dtype", None)
    full.update({"torch_dtype": "float32", "transformers_version": "4.21.0.dev0",
                 "text_config_dict": dict(text), "vision_config_dict": dict(vision)})
    (out / "config.json").write_text(json.dumps(full, indent=2))
    s = vision["image_size"]
    (out / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": s, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": s}, indent=2))
    special = {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "unk_token": special, "bos_token": dict(special, content="<|startoftext|>"), "eos_token": special,
        "pad_token": "<|endoftext|>", "add_prefix_space": False, "errors": "replace", "do_lower_case": True,
        "name_or_path": "openai/clip-vit-base-patch32", "model_max_length": text["max_position_embeddings"],
        "tokenizer_class": "CLIPTokenizer"}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}, indent=2))
    assert eot > sot
    model = CLIPModel.from_pretrained(out).eval()
    proc = pil_images(CLIPProcessor.from_pretrained(out), out)
    enc = proc(text=texts, images=[Image.open(p) for p in images], padding=True, return_tensors="pt")
    with torch.no_grad():
        o = model(**enc)
    ref = {"pixel_values": enc["pixel_values"], "input_ids": enc["input_ids"].to(torch.int64),
           "attention_mask": enc["attention_mask"].to(torch.int64),
           "image_embeds": o.image_embeds, "text_embeds": o.text_embeds,
           "logits_per_image": o.logits_per_image, "probs": o.logits_per_image.softmax(dim=-1)}
    save_file(tensors_of(ref), out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(
        {"images": [p.name for p in images], "texts": texts}, indent=1))


def gemma_style_tokenizer(vocab_size):
    """A Gemma-style tokenizer.json: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4, BPE with byte
    fallback over text whose spaces are ▁, <bos> prepended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    tok.train_from_iterator([c.lower() for c in CAPTIONS] * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return tok


def siglip2_folder(name, text, processor_class):
    """A fresh fixture folder with SigLIP 2's Gemma-style tokenizer files; returns the folder and
    the text config completed with the tokenizer's vocabulary and special ids."""
    out = FIX / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tok = gemma_style_tokenizer(300)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Siglip2Tokenizer", "model_max_length": 64, "pad_token": "<pad>", "eos_token": "<eos>",
        "bos_token": "<bos>", "unk_token": "<unk>", "mask_token": "<mask>", "processor_class": processor_class},
        indent=2))
    return out, dict(text, vocab_size=tok.get_vocab_size(), pad_token_id=0, bos_token_id=2, eos_token_id=1)


def siglip2_fixed(name, seed, vision, text, images, texts):
    from transformers import AutoProcessor, SiglipConfig, SiglipModel
    out, text = siglip2_folder(name, text, "SiglipProcessor")
    torch.manual_seed(seed)
    config = SiglipConfig(text_config=text, vision_config=vision)
    model = SiglipModel(config).eval()
    randomise(model, seed)
    model.save_pretrained(out)
    s = vision["image_size"]
    (out / "preprocessor_config.json").write_text(json.dumps({
        "do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor", "resample": 2, "rescale_factor": 0.00392156862745098,
        "size": {"height": s, "width": s}}, indent=2))
    model = SiglipModel.from_pretrained(out).eval()
    proc = pil_images(AutoProcessor.from_pretrained(out), out)
    assert type(proc.tokenizer).__name__ == "Siglip2Tokenizer" and proc.tokenizer.padding_side == "left"
    enc = proc(text=texts, images=[Image.open(p) for p in images], padding="max_length", max_length=64,
               return_tensors="pt")
    assert "attention_mask" in enc  # the Gemma tokenizer hands the padding mask to the model
    with torch.no_grad():
        o = model(**enc)
    ref = {"pixel_values": enc["pixel_values"], "input_ids": enc["input_ids"].to(torch.int64),
           "image_embeds": o.image_embeds, "text_embeds": o.text_embeds,
           "logits_per_image": o.logits_per_image, "probs": torch.sigmoid(o.logits_per_image)}
    save_file(tensors_of(ref), out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(
        {"images": [p.name for p in images], "texts": texts}, indent=1))


def siglip2_naflex(name, seed, vision, text, images, texts, max_num_patches):
    from transformers import AutoProcessor, Siglip2Config, Siglip2Model
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil
    out, text = siglip2_folder(name, text, "Siglip2Processor")
    torch.manual_seed(seed)
    model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision)).eval()
    randomise(model, seed)
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Siglip2ImageProcessorFast",
        "image_std": [0.5, 0.5, 0.5], "max_num_patches": max_num_patches, "patch_size": vision["patch_size"],
        "processor_class": "Siglip2Processor", "resample": 2, "rescale_factor": 0.00392156862745098}, indent=2))
    model = Siglip2Model.from_pretrained(out).eval()
    proc = AutoProcessor.from_pretrained(out)
    proc.image_processor = Siglip2ImageProcessorPil.from_pretrained(out)
    assert type(proc.tokenizer).__name__ == "Siglip2Tokenizer"
    enc = proc(text=texts, images=[Image.open(p) for p in images], padding="max_length", max_length=64,
               max_num_patches=max_num_patches, patch_size=vision["patch_size"], return_tensors="pt")
    with torch.no_grad():
        o = model(**enc)
    ref = {"pixel_values": enc["pixel_values"], "input_ids": enc["input_ids"].to(torch.int64),
           "spatial_shapes": enc["spatial_shapes"].to(torch.int64),
           "image_embeds": o.image_embeds, "text_embeds": o.text_embeds,
           "logits_per_image": o.logits_per_image, "probs": torch.sigmoid(o.logits_per_image)}
    save_file(tensors_of(ref), out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(
        {"images": [p.name for p in images], "texts": texts,
         "spatial_shapes": enc["spatial_shapes"].tolist()}, indent=1))


def clip_tokenizer_eot_last(vocab_size):
    """bpe_tokenizer with <|startoftext|> and <|endoftext|> moved to the last two ids, as in the
    real CLIP vocabulary (open_clip pools the text at the largest id)."""
    from tokenizers import Tokenizer
    tok = bpe_tokenizer(vocab_size)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    specials = ["<|startoftext|>", "<|endoftext|>"]
    order = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in specials] + specials
    new = {t: i for i, t in enumerate(order)}
    j["model"]["vocab"] = new
    for a in j["added_tokens"]:
        a["id"] = new[a["content"]]
    for k, v in j["post_processor"]["special_tokens"].items():
        v["ids"] = [new[k]]
    return Tokenizer.from_str(json.dumps(j))


def open_clip_export(name, seed, images, texts):
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.push_to_hf_hub import save_config_for_hf
    from open_clip.transform import image_transform
    out = FIX / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tok = clip_tokenizer_eot_last(300)
    vocab = tok.get_vocab_size()
    model_cfg = {"embed_dim": 24,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
                 "text_cfg": {"context_length": 20, "vocab_size": vocab, "width": 32, "heads": 4, "layers": 2}}
    torch.manual_seed(seed)
    model = CLIP(model_cfg["embed_dim"], CLIPVisionCfg(**model_cfg["vision_cfg"]),
                 CLIPTextCfg(**model_cfg["text_cfg"])).eval()
    randomise(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(10.0) + 0.3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    model.visual.image_mean, model.visual.image_std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    save_config_for_hf(model, out / "open_clip_config.json", model_config=model_cfg)
    from transformers import PreTrainedTokenizerFast
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                            model_max_length=20).save_pretrained(out)
    preprocess = image_transform(32, is_train=False, mean=model.visual.image_mean, std=model.visual.image_std)
    pixels = torch.stack([preprocess(Image.open(p)) for p in images])
    ids = torch.zeros(len(texts), 20, dtype=torch.long)  # open_clip pads with 0 to the context length
    for i, t in enumerate(texts):
        row = tok.encode(t).ids[:20]
        row[-1] = tok.token_to_id("<|endoftext|>") if len(tok.encode(t).ids) > 20 else row[-1]
        ids[i, :len(row)] = torch.tensor(row)
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(ids, normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
    ref = {"pixel_values": pixels, "input_ids": ids, "image_embeds": img, "text_embeds": txt,
           "logits_per_image": logits, "probs": logits.softmax(dim=-1)}
    save_file(tensors_of(ref), out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(
        {"images": [p.name for p in images], "texts": texts, "open_clip": open_clip.__version__}, indent=1))


def main(wanted):
    torch.set_num_threads(1)
    imgs = make_images()
    want = lambda name: not wanted or name in wanted  # noqa: E731
    texts = CAPTIONS[:4] + CAPTIONS[-1:]
    if want("hub-siglip"):
        siglip_fixtures(imgs, texts)
    if want("hub-clip-legacy"):
        clip_legacy(
            "hub-clip-legacy", 13,
            vision=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4),
            text=dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=20),
            projection_dim=24, images=[imgs[0], imgs[4]], texts=texts[:4])
    if want("hub-siglip2"):
        siglip2_fixed(
            "hub-siglip2", 15,
            vision=dict(hidden_size=32, image_size=32, intermediate_size=64, num_attention_heads=4,
                        num_hidden_layers=2, patch_size=8),
            text=dict(hidden_size=32, intermediate_size=48, num_attention_heads=2, num_hidden_layers=2),
            # RGB only: with do_convert_rgb null, as the repos have it, transformers cannot take grey images.
            images=[imgs[0], imgs[1], imgs[4]], texts=texts)
    if want("hub-siglip2-naflex"):
        siglip2_naflex(
            "hub-siglip2-naflex", 16,
            vision=dict(hidden_size=32, num_patches=16, intermediate_size=64, num_attention_heads=4,
                        num_hidden_layers=2, patch_size=8),
            text=dict(hidden_size=32, intermediate_size=48, num_attention_heads=2, num_hidden_layers=2),
            images=[imgs[0], imgs[1], imgs[4]], texts=texts, max_num_patches=24)
    if want("hub-open-clip"):
        open_clip_export("hub-open-clip", 14, images=[imgs[0], imgs[1], imgs[4]], texts=texts)
    if want("open-clip-bpe"):
        open_clip_bpe_corpus()
    if want("naflex-grads"):
        naflex_grads()
    if want("text-mask"):
        for name in ["hub-siglip-base", "hub-siglip2"]:
            text_mask_reference(name)
    print("hub fixtures written to", FIX)


def naflex_grads():
    """The SigLIP loss of hub-siglip2-naflex on its 3 images (NaFlex patches at each image's own
    aspect ratio, padding masked) and its first 3 texts, and the gradient of every parameter
    (`vlm-zoo train --init` a NaFlex folder). Reads only the committed folder."""
    from transformers import AutoModel, AutoProcessor
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil
    out = FIX / "hub-siglip2-naflex"
    meta = json.loads((out / "reference.json").read_text())
    pre = json.loads((out / "preprocessor_config.json").read_text())
    model = AutoModel.from_pretrained(out).eval()
    proc = AutoProcessor.from_pretrained(out)
    proc.image_processor = Siglip2ImageProcessorPil.from_pretrained(out)
    images = [Image.open(FIX / "images" / name) for name in meta["images"]]
    enc = proc(text=meta["texts"][:3], images=images, padding="max_length", max_length=64,
               max_num_patches=pre["max_num_patches"], patch_size=pre["patch_size"], return_tensors="pt")
    o = model(**enc, return_loss=True)
    o.loss.backward()
    grads = {"loss": o.loss.detach().reshape(1)}
    grads.update({f"grad.{k}": p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None})
    save_file({k: v.contiguous() for k, v in grads.items()}, out / "grads.safetensors")


def open_clip_bpe_corpus():
    """open_clip's default tokenizer (SimpleTokenizer over bpe_simple_vocab_16e6, ftfy and HTML
    cleaning, lower-casing) on the corpus plus curly quotes, ligatures, HTML entities and a text
    longer than the context: the ids vlm-zoo's built-in copy must give for OpenCLIP repositories
    without tokenizer.json (apple/DFN*, many laion exports)."""
    import open_clip
    tok = open_clip.get_tokenizer("ViT-B-32")
    extra = ["\u201ccurly\u201d \u2018quotes\u2019 and an apostrophe\u2019s", "the \ufb01rst \ufb02oor, e\ufb00ort",
             "fish &amp; chips &lt;3 &#39;quoted&#39; &quot;x&quot;", "it's we're they've I'm we'll he'd IT'S",
             "snake_case and kebab-case and CamelCase", "x " * 100]
    texts = CORPUS + extra
    out = FIX / "open-clip-bpe"
    out.mkdir(parents=True, exist_ok=True)
    ids = tok(texts).tolist()  # [sot] + tokens + [eot], truncated to 77 (eot last), zero-padded
    ids = [row[:max(i for i, v in enumerate(row) if v) + 1] for row in ids]
    (out / "corpus.json").write_text(json.dumps(
        {"open_clip": open_clip.__version__, "context_length": 77, "texts": texts, "ids": ids},
        ensure_ascii=False, indent=0))


def text_mask_reference(name):
    """Both SigLIP text-mask conventions on a committed folder (`--text-mask on|off`): the text
    tower with the padding mask the tokenizer gives when asked for one, and without any. Reads
    only the committed files, so it reproduces whatever else the folder holds."""
    from transformers import AutoModel, AutoTokenizer
    out = FIX / name
    texts = json.loads((out / "reference.json").read_text())["texts"]
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModel.from_pretrained(out).eval()
    length = model.config.text_config.max_position_embeddings
    enc = tok(texts, padding="max_length", truncation=True, max_length=length, return_attention_mask=True,
              return_tensors="pt")
    with torch.no_grad():
        on = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        off = model.get_text_features(input_ids=enc["input_ids"])
    on, off = (getattr(t, "pooler_output", t) for t in (on, off))
    ref = {"input_ids": enc["input_ids"].to(torch.int64), "attention_mask": enc["attention_mask"].to(torch.int64),
           "text_embeds_on": on / on.norm(dim=-1, keepdim=True), "text_embeds_off": off / off.norm(dim=-1, keepdim=True)}
    save_file({k: v.contiguous() for k, v in ref.items()}, out / "reference-text-mask.safetensors")


def siglip_fixtures(imgs, texts):
    tmp = FIX / ".spiece"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    train_spiece(tmp, 180)
    tok = siglip_hub(
        "hub-siglip-base", 11,
        vision=dict(hidden_size=32, image_size=32, intermediate_size=64, num_attention_heads=4,
                    num_hidden_layers=2, patch_size=8),
        text=dict(hidden_size=32, intermediate_size=48, num_attention_heads=2, num_hidden_layers=2),
        images=imgs[:3], texts=texts, spiece_dir=tmp)
    siglip_hub(
        "hub-siglip-so400m", 12,
        vision=dict(hidden_size=24, image_size=44, intermediate_size=40, num_attention_heads=2,
                    num_hidden_layers=2, patch_size=14),
        text=dict(hidden_size=24, intermediate_size=40, num_attention_heads=3, num_hidden_layers=1),
        images=imgs[1:4], texts=texts[::-1], spiece_dir=tmp)
    shutil.rmtree(tmp)
    corpus = {"tokenizer": type(tok).__name__, "texts": CORPUS,
              "ids": [tok(t)["input_ids"] for t in CORPUS]}
    (FIX / "hub-siglip-base" / "tokenizer_corpus.json").write_text(json.dumps(corpus, ensure_ascii=False, indent=0))


if __name__ == "__main__":
    main(sys.argv[1:])  # names: hub-siglip (both SigLIP folders), hub-siglip2, hub-siglip2-naflex, hub-clip-legacy, hub-open-clip, open-clip-bpe, naflex-grads, text-mask; none: all
