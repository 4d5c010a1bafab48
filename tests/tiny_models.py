"""Tiny random-weight encoders made offline, for the bring-your-own-backbone tests and bench.

Each family gets a small config (hidden 32, 2 layers), random weights from a fixed seed and a
tokenizer trained here with the `tokenizers` library (WordPiece for BERT and DistilBERT,
byte-level BPE for RoBERTa and ModernBERT), saved as a Hugging Face directory. Nothing is
downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path

# Enough words for a vocabulary that covers the calibration texts' common pieces.
CORPUS = [
    "The movie was surprisingly good, with a clever script and fine acting.",
    "Refund my order now! Shipping took three weeks and the box arrived damaged.",
    "What time does the store open on Sundays? Can I change the delivery address?",
    "Please reset my password; I cannot log in to my account since yesterday.",
    "The stock market fell sharply on Tuesday after the central bank's announcement.",
    "A quiet, patient drama about grief that earns every one of its tears.",
    "Machine learning models are trained on data, then frozen and reused for new tasks.",
    "hello world, terrible boring awful film, I loved it, great service, bad service",
    "weather sports politics science music travel food health money technology",
] * 4

FAMILIES = ("bert", "distilbert", "roberta", "modernbert")


def _wordpiece(out: Path) -> dict:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, WordPieceTrainer(vocab_size=300, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
        "sep_token": "[SEP]", "mask_token": "[MASK]", "do_lower_case": True, "model_max_length": 64}))
    return {"vocab_size": tok.get_vocab_size(), "pad_token_id": tok.token_to_id("[PAD]")}


def _bytelevel_bpe(out: Path, *, roberta: bool) -> dict:
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, BpeTrainer(vocab_size=400, special_tokens=special,
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    if roberta:
        tok.post_processor = processors.RobertaProcessing(("</s>", eos), ("<s>", bos))
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", bos), ("</s>", eos)])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "RobertaTokenizerFast" if roberta else "PreTrainedTokenizerFast", "pad_token": "<pad>",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>",
        "model_max_length": 64}))
    return {"vocab_size": tok.get_vocab_size(), "pad_token_id": tok.token_to_id("<pad>"),
            "bos_token_id": bos, "eos_token_id": eos}


def make_tiny(family: str, out: Path, *, seed: int = 0, max_positions: int = 64) -> Path:
    """A random-weight `family` encoder (hidden 32, 2 layers) with its own trained tokenizer,
    saved under `out` as a Hugging Face model directory."""
    import torch
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    if family in ("bert", "distilbert"):
        tok = _wordpiece(out)
    elif family in ("roberta", "modernbert"):
        tok = _bytelevel_bpe(out, roberta=family == "roberta")
    else:
        raise ValueError(f"no tiny {family!r}: use one of {FAMILIES}")
    torch.manual_seed(seed)
    if family == "bert":
        config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=max_positions, **tok)
        model = transformers.BertModel(config, add_pooling_layer=False)
    elif family == "distilbert":
        config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                               max_position_embeddings=max_positions, **tok)
        model = transformers.DistilBertModel(config)
    elif family == "roberta":
        # RoBERTa's positions start after the padding index: max_positions + 2 rows.
        config = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64, max_position_embeddings=max_positions + 2,
                                            type_vocab_size=1, **tok)
        model = transformers.RobertaModel(config, add_pooling_layer=False)
    else:
        config = transformers.ModernBertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, max_position_embeddings=max_positions,
                                               global_attn_every_n_layers=2, local_attention=16,
                                               cls_token_id=tok["bos_token_id"], sep_token_id=tok["eos_token_id"],
                                               **tok)
        model = transformers.ModernBertModel(config)
    model.eval()
    model.save_pretrained(str(out))
    return out


# -- images: ViT, ConvNeXt, ResNet, CLIP (models/hf_image.py) --------------------------------

IMAGE_FAMILIES = ("vit", "convnext", "resnet", "clip")
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
CLIP_MEAN_STD = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}


def _clip_tokenizer(out: Path) -> dict:
    """CLIP's tokenizer, tiny: a BPE with CLIP's word-end suffix trained here with `tokenizers`,
    its vocabulary and merges then made a CLIPTokenizer (transformers' fast one: CLIP's own
    normaliser, pre-tokeniser and <|startoftext|> ... <|endoftext|> template), saved with
    tokenizer.json."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import CLIPTokenizer

    special = ["<|startoftext|>", "<|endoftext|>"]
    tok = Tokenizer(BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    words = CORPUS + ["a photo of a " + w for w in ("cat dog car tree house circle square stripe red green blue "
                                                    "sky apple bird boat flower").split()]
    tok.train_from_iterator(words, BpeTrainer(vocab_size=600, special_tokens=special, initial_alphabet=alphabet,
                                              end_of_word_suffix="</w>"))
    vocab = tok.get_vocab()
    for ch in alphabet:  # every byte alone and as a word end, as CLIP's vocabulary has
        for piece in (ch, ch + "</w>"):
            vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(tok.to_str())["model"]["merges"]]
    fast = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=32)
    fast.save_pretrained(str(out))
    eos = fast.convert_tokens_to_ids("<|endoftext|>")
    return {"vocab_size": len(fast), "bos_token_id": fast.convert_tokens_to_ids("<|startoftext|>"),
            "eos_token_id": eos, "pad_token_id": eos}


def make_tiny_image(family: str, out: Path, *, seed: int = 0, classifier: bool = False, side: int = 32) -> Path:
    """A random-weight image model of `family` (ViT: patches of 8 on `side` pixels, hidden 32,
    2 layers; ConvNeXt and ResNet: two small stages; CLIP: that ViT and a 2-layer text encoder
    with its own tokenizer, projected to 16) with its preprocessor_config.json, saved under
    `out` as a Hugging Face model directory. `classifier`: ViT saved as
    ViTForImageClassification (no pooler weights)."""
    import torch
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vit = dict(image_size=side, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64)
    if family == "vit":
        config = transformers.ViTConfig(**vit, num_labels=3)
        model = transformers.ViTForImageClassification(config) if classifier else transformers.ViTModel(config)
        pre = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": side, "width": side},
               "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
               "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    elif family == "convnext":
        config = transformers.ConvNextConfig(patch_size=4, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                             image_size=side)
        model = transformers.ConvNextModel(config)
        pre = {"image_processor_type": "ConvNextImageProcessor", "do_resize": True, "size": {"shortest_edge": side},
               "crop_pct": 0.875, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
               "do_normalize": True, **IMAGENET}
    elif family == "resnet":
        config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        model = transformers.ResNetModel(config)
        pre = {"image_processor_type": "ConvNextImageProcessor", "do_resize": True, "size": {"shortest_edge": side},
               "crop_pct": 0.875, "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255,
               "do_normalize": True, **IMAGENET}
    elif family == "clip":
        tok = _clip_tokenizer(out)
        config = transformers.CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=32, **tok),
            vision_config={k: v for k, v in vit.items()}, projection_dim=16)
        model = transformers.CLIPModel(config)
        pre = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": side},
               "resample": 3, "do_center_crop": True, "crop_size": {"height": side, "width": side},
               "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
               **CLIP_MEAN_STD}
    else:
        raise ValueError(f"no tiny image {family!r}: use one of {IMAGE_FAMILIES}")
    model.eval()
    model.save_pretrained(str(out))
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    return out

