"""Builders shared by every test folder: real images written with PIL, Label Studio-shaped JWTs and a stand-in
checkpoint folder, and the benchmark scripts loaded as modules. Import them as `from tests.builders import ...`."""
from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Iterator

from PIL import Image


def png_bytes(size=(64, 48), color=(255, 0, 0), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def exif_rotated_jpeg(size=(80, 40), orientation=6, color=(0, 128, 0)) -> bytes:
    """A landscape JPEG whose EXIF says 'rotate 90° clockwise to display' (displayed size: portrait)."""
    image = Image.new("RGB", size, color)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def fake_jwt(claims: dict) -> str:
    """A JWT-shaped token (unsigned: the backend only reads its claims, Label Studio checks the signature)."""
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def fake_checkpoint(path: Path, version: str) -> Path:
    """A folder the model registry takes for a checkpoint (config.json naming its version, a weights file); it does
    not load as a model."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "regionscribe", "metadata": {"version": version}}))
    (path / "model.safetensors").write_bytes(b"x")
    return path


# ------------------------------------------------------------------ tiny pretrained parts (tower and LM folders)
TINY_TOWER = dict(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=10,
                  num_attention_heads=2)
TINY_LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False)


def lm_tokenizer():
    """A byte-level BPE trained on the corpus' words, as an LM folder would ship it: no region tokens, no pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from regionscribe.training.corpus import vocabulary_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<unk>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(vocabulary_text()), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_tower(kind: str, folder: Path) -> Path:
    """A random CLIP or SigLIP vision tower saved as an HF folder."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    model = (CLIPVisionModel(CLIPVisionConfig(**TINY_TOWER)) if kind == "clip"
             else SiglipVisionModel(SiglipVisionConfig(**TINY_TOWER)))
    model.save_pretrained(folder)
    return folder


def tiny_lm(family: str, folder: Path) -> Path:
    """A random causal LM of a family (llama, qwen2, qwen3, mistral) with its tokenizer, saved as an HF folder."""
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

    tok = lm_tokenizer()
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cls, cfg = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config),
                "qwen3": (Qwen3ForCausalLM, Qwen3Config), "mistral": (MistralForCausalLM, MistralConfig)}[family]
    extra = {"head_dim": 16} if family == "qwen3" else {}
    torch.manual_seed(0)
    cls(cfg(**TINY_LM, **ids, **extra)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_parts_checkpoint(folder: Path, work: Path, version: str = "parts-base") -> Path:
    """An untrained tower + LM model (random CLIP tower, random Llama with its tokenizer) saved as a checkpoint: a
    model with a pretrained LM that never saw the synthetic corpus."""
    from transformers import AutoTokenizer, PretrainedConfig

    from regionscribe.model.config import from_parts
    from regionscribe.model.modeling import RegionScribeModel

    vision, lm = tiny_tower("clip", work / "clip"), tiny_lm("llama", work / "llama")
    model = RegionScribeModel(from_parts(str(vision), str(lm)),
                              AutoTokenizer.from_pretrained(str(lm), config=PretrainedConfig()))
    model.save_pretrained(folder, metadata={"version": version, "synthetic_corpus": False})
    return folder


@contextlib.contextmanager
def benchmark_module(name: str) -> Iterator:
    """benchmarks/<name>.py loaded as a module, registered in sys.modules while in use (dataclasses look their
    module up there)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
