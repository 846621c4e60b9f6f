"""GPT4RoI's released checkpoint -> a regionscribe checkpoint (`regionscribe convert gpt4roi`).

GPT4RoI (jshilong/GPT4RoI; weights shilongz/GPT4RoI-7B-delta-V0) is a LLaVA-v0 LLaMA-7B with a region module. Its
state dict maps one to one onto RegionScribeModel's (the `gpt4roi` preset has its exact shape):

    model.embed_tokens / model.layers.* / model.norm / lm_head   -> lm.model.* / lm.lm_head (a plain LlamaForCausalLM)
    model.mm_projector                                           -> projector
    model.spi_module.mlvl_fuse.input_conv.{l}                    -> region_encoder.fuse.input_convs.{l}
    model.spi_module.mlvl_fuse.fuse_convs.{r}.conv / .gn         -> region_encoder.fuse.rounds.{r}.0 / .1
    model.spi_module.roi_align.pconvs.{l}                        -> region_encoder.level_convs.{l}
    model.spi_module.roi_align.pos_embedd.{0,2,3,5}              -> region_encoder.position.{0,2,3,5}
    model.spi_module.roi_align.flatten_linear / updims           -> region_encoder.flatten_linear / to_lm
    model.layers.{i}.self_attn.rotary_emb.inv_freq               -> dropped (a buffer transformers recomputes)

The CLIP tower is not in GPT4RoI's checkpoint (it keeps the tower out of its module tree); it is read from a local
CLIP ViT-L/14 folder and copied into the output, so the converted folder is self-contained and can be moved.

Streaming: the source is read one shard at a time (memory-mapped) and the output written in shards of at most
`max_shard_bytes`, so peak memory is about one input shard plus one output shard, never two whole models. Every key,
shape and (with a delta base) base key is checked from the files' headers before anything is written; on a mismatch
`ConversionError` lists the missing, unexpected and misshaped keys and no output folder exists.

Delta (`delta_base`, GPT4RoI's scripts/apply_delta.py rules): for every delta key the base's weight of the same name is
added; `mm_projector.*` and `spi_module.*` are absolute; embed_tokens and lm_head add the base into their first rows
(the six added tokens' rows are absolute). The sum is taken in the delta's dtype, as the script does.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from regionscribe.model.config import gpt4roi
from regionscribe.model.weights import DEFAULT_SHARD_BYTES, Shard, ShardWriter, shard_files

# GPT4RoI's added tokens, in the order its tokenizer got them: ids vocab-6 .. vocab-1 (32000-32005 on LLaMA)
ADDED_TOKENS = ["[PAD]", "<im_patch>", "<bbox>", "<point>", "<im_start>", "<im_end>"]
IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
ABSOLUTE = re.compile(r"^model\.(mm_projector|spi_module)\.")
ROW_BLOCK = {"model.embed_tokens.weight", "lm_head.weight"}
_RENAMES = [
    (re.compile(r"^model\.mm_projector\.(weight|bias)$"), r"projector.\1"),
    (re.compile(r"^model\.spi_module\.mlvl_fuse\.input_conv\.(\d+)\.(weight|bias)$"),
     r"region_encoder.fuse.input_convs.\1.\2"),
    (re.compile(r"^model\.spi_module\.mlvl_fuse\.fuse_convs\.(\d+)\.conv\.weight$"),
     r"region_encoder.fuse.rounds.\1.0.weight"),
    (re.compile(r"^model\.spi_module\.mlvl_fuse\.fuse_convs\.(\d+)\.gn\.(weight|bias)$"),
     r"region_encoder.fuse.rounds.\1.1.\2"),
    (re.compile(r"^model\.spi_module\.roi_align\.pconvs\.(\d+)\.(weight|bias)$"), r"region_encoder.level_convs.\1.\2"),
    (re.compile(r"^model\.spi_module\.roi_align\.pos_embedd\.(\d+)\.(weight|bias)$"), r"region_encoder.position.\1.\2"),
    (re.compile(r"^model\.spi_module\.roi_align\.flatten_linear\.(weight|bias)$"), r"region_encoder.flatten_linear.\1"),
    (re.compile(r"^model\.spi_module\.roi_align\.updims\.(weight|bias)$"), r"region_encoder.to_lm.\1"),
    (re.compile(r"^(model\.(?:embed_tokens|layers|norm)\..+|lm_head\.weight)$"), r"lm.\1"),
]


class ConversionError(ValueError):
    """The source does not have GPT4RoI's structure (or the delta does not fit its base); nothing was written."""


def target_name(key: str) -> str | None:
    """regionscribe's name for a GPT4RoI key; None for a key GPT4RoI's module tree does not have."""
    for pattern, repl in _RENAMES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing: is {path.parent} a GPT4RoI checkpoint?") from None


def lm_config(source_config: dict[str, Any]):
    """The LLaMA config inside GPT4RoI's config.json (model_type "llava", architecture SPILlavaMPTForCausalLM)."""
    from transformers import LlamaConfig

    c = source_config
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    if any(k not in c for k in keys):
        raise ConversionError(f"config.json lacks {[k for k in keys if k not in c]}: not a LLaMA-based checkpoint")
    return LlamaConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
        rms_norm_eps=c.get("rms_norm_eps", 1e-6), max_position_embeddings=c.get("max_position_embeddings", 2048),
        hidden_act=c.get("hidden_act", "silu"), initializer_range=c.get("initializer_range", 0.02),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)), bos_token_id=c.get("bos_token_id", 1),
        eos_token_id=c.get("eos_token_id", 2), pad_token_id=c.get("pad_token_id", 0),
    )


def load_tokenizer(folders: list[Path], vocab_size: int):
    """The LLaMA tokenizer with GPT4RoI's six added tokens at ids vocab-6 .. vocab-1 (32000-32005 for LLaMA-7B).

    Taken from the first folder that has a tokenizer (GPT4RoI's own, then the delta base); a plain LLaMA tokenizer
    gets the six tokens added in GPT4RoI's order."""
    from transformers import AutoTokenizer, PretrainedConfig

    errors = []
    for folder in folders:
        if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            continue
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), config=PretrainedConfig())
            break
        except (OSError, ValueError, ImportError) as exc:
            errors.append(f"{folder}: {exc}")
    else:
        raise ConversionError("no loadable tokenizer in " + ", ".join(map(str, folders))
                              + (" (" + "; ".join(errors) + ")" if errors else "")
                              + ": the LLaMA tokenizer is needed as tokenizer.json (tokenizers' format)")
    base = vocab_size - len(ADDED_TOKENS)
    present = [t for t in ADDED_TOKENS if t in tok.get_vocab()]
    if not present and len(tok) == base:
        tok.add_special_tokens({"pad_token": ADDED_TOKENS[0]})
        tok.add_tokens(ADDED_TOKENS[1:], special_tokens=True)
    ids = tok.convert_tokens_to_ids(ADDED_TOKENS)
    if ids != list(range(base, vocab_size)) or len(tok) != vocab_size:
        raise ConversionError(f"the tokenizer has {len(tok)} tokens with {ADDED_TOKENS} at {ids}; GPT4RoI's "
                              f"embeddings need {vocab_size} with them at {base}..{vocab_size - 1}")
    if tok.pad_token != ADDED_TOKENS[0]:
        tok.add_special_tokens({"pad_token": ADDED_TOKENS[0]})
    return tok


def _shape_plan(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The region module's dimensions read off the weights (GN groups and the pyramid are GPT4RoI's fixed ones)."""
    def need(key):
        if key not in shapes:
            raise ConversionError(f"{key} is missing: not a GPT4RoI checkpoint")
        return shapes[key]

    fuse, in_ch = need("model.spi_module.mlvl_fuse.input_conv.0.weight")[:2]
    flat_out, flat_in = need("model.spi_module.roi_align.flatten_linear.weight")
    roi = int(round((flat_in / fuse) ** 0.5))
    count = lambda pat: len({m.group(1) for k in shapes for m in [re.match(pat, k)] if m})  # noqa: E731
    return dict(
        vision_hidden=in_ch - 2, fuse_channels=fuse, region_hidden=flat_out, roi_output=roi,
        num_levels=count(r"^model\.spi_module\.mlvl_fuse\.input_conv\.(\d+)\."),
        num_fuse=count(r"^model\.spi_module\.mlvl_fuse\.fuse_convs\.(\d+)\."),
        position_hidden=need("model.spi_module.roi_align.pos_embedd.0.weight")[0],
    )


def _expected_shapes(model_config, tokenizer, vision_config, lm_cfg) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the converted model's weights (the tower's included), from the model built on the meta
    device."""
    from transformers import AutoModelForCausalLM, CLIPVisionModel

    from regionscribe.model.modeling import RegionScribeModel

    with torch.device("meta"):
        vision = CLIPVisionModel(vision_config)
        lm = AutoModelForCausalLM.from_config(lm_cfg)
        model = RegionScribeModel(model_config, tokenizer, vision=vision, lm=lm)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _tower_keys(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> tuple[dict, list, list]:
    """The CLIP folder's vision weights -> (regionscribe name -> source key, missing, misshaped). A CLIPModel folder
    (openai's) or an older CLIPVisionModel save names them `vision_model.*` (the text side is skipped); transformers
    5 saves a CLIPVisionModel's without the prefix."""
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in shapes) else ""
    names, misshaped = {}, []
    for key, shape in shapes.items():
        if not key.startswith(prefix) or key.endswith("position_ids"):  # text side; an old saved buffer
            continue
        name = "vision." + key[len(prefix):]
        if name not in expected:
            misshaped.append(f"{key} (not in a CLIP vision tower)")
        elif tuple(shape) != expected[name]:
            misshaped.append(f"{key} {list(shape)} (expected {list(expected[name])})")
        names[name] = key
    missing = [k for k in expected if k.startswith("vision.") and k not in names]
    return names, missing, misshaped


def _check(source_shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
           base_shapes: dict[str, tuple[int, ...]] | None) -> None:
    missing, unexpected, misshaped, base_problems = [], [], [], []
    expected = {k: v for k, v in expected.items() if not k.startswith("vision.")}
    covered = set()
    for key, shape in source_shapes.items():
        if IGNORED.match(key):
            continue
        name = target_name(key)
        if name is None or name not in expected:
            unexpected.append(key)
            continue
        covered.add(name)
        if tuple(shape) != expected[name]:
            misshaped.append(f"{key} {list(shape)} (expected {list(expected[name])})")
        if base_shapes is not None and not ABSOLUTE.match(key):
            base = base_shapes.get(key)
            if base is None:
                base_problems.append(f"{key} is not in the base")
            elif tuple(base) != tuple(shape) and not (
                    key in ROW_BLOCK and len(base) == len(shape) and all(b <= s for b, s in zip(base, shape))):
                base_problems.append(f"{key}: delta {list(shape)}, base {list(base)}")
    missing = [k for k in expected if k not in covered]
    if missing or unexpected or misshaped or base_problems:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped),
                             ("not matching the delta base", base_problems)):
            if items:
                parts.append(f"{len(items)} {title}: " + ", ".join(sorted(items)[:20])
                             + (f", ... ({len(items) - 20} more)" if len(items) > 20 else ""))
        raise ConversionError("not GPT4RoI's structure, nothing written. " + "; ".join(parts))


def _all_shapes(folder: Path) -> tuple[list[Shard], dict[str, tuple[int, ...]], dict[str, int]]:
    shards = [Shard(p) for p in shard_files(folder)]
    shapes, where = {}, {}
    for i, shard in enumerate(shards):
        for k, (shape, _) in shard.shapes().items():
            shapes[k], where[k] = shape, i
        shard.close()
    return shards, shapes, where


class _Base:
    """The delta base, read key by key with at most one shard mapped at a time."""

    def __init__(self, folder: Path):
        self.shards, self.shapes, self.where = _all_shapes(folder)
        self._open: int | None = None

    def get(self, key: str) -> torch.Tensor:
        i = self.where[key]
        if self._open is not None and self._open != i:
            self.shards[self._open].close()
        self._open = i
        return self.shards[i].get(key)

    def close(self) -> None:
        if self._open is not None:
            self.shards[self._open].close()


def apply_delta(key: str, delta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """GPT4RoI's apply_delta for one tensor (not for the absolute mm_projector/spi_module keys): the base added in the
    delta's dtype, as its script does (`param.data += base`); into the first rows for embed_tokens and lm_head."""
    out = delta.clone()
    if base.shape == delta.shape:
        out += base.to(out.dtype)
    else:  # embed_tokens / lm_head: the base's rows, the added tokens' rows stay absolute
        out[tuple(slice(0, n) for n in base.shape)] += base.to(out.dtype)
    return out


def convert(source: str | Path, vision: str | Path, out: str | Path, delta_base: str | Path | None = None,
            max_shard_bytes: int = DEFAULT_SHARD_BYTES, version: str | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Convert GPT4RoI's checkpoint folder `source` (with the CLIP tower folder `vision`) into `out`.

    `delta_base`: a LLaMA-7B (v1) HF folder; `source` is then GPT4RoI's released delta. `progress(stage, done, total)`
    is called per shard. Returns `out`."""
    from transformers import CLIPVisionConfig

    from regionscribe.model.checkpoints import write_config

    source, vision, out = Path(source), Path(vision), Path(out)
    if out.exists():
        raise ConversionError(f"{out} exists; choose a new folder")
    src_config = _read_json(source / "config.json")
    lm_cfg = lm_config(src_config)
    try:
        vision_config = CLIPVisionConfig.from_pretrained(str(vision))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{vision} is not a CLIP vision tower folder: {exc}") from None
    shards, shapes, _ = _all_shapes(source)
    plan = _shape_plan(shapes)
    mm_hidden = src_config.get("mm_hidden_size", plan["vision_hidden"])
    if vision_config.hidden_size != plan["vision_hidden"] or vision_config.hidden_size != mm_hidden:
        raise ConversionError(f"the tower {vision} is {vision_config.hidden_size} wide but the checkpoint's region "
                              f"module takes {plan['vision_hidden']} channels (mm_hidden_size {mm_hidden})")
    tokenizer = load_tokenizer([source] + ([Path(delta_base)] if delta_base else []), lm_cfg.vocab_size)
    vision_dims = {k: getattr(vision_config, k) for k in
                   ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "projection_dim", "hidden_act", "layer_norm_eps")}
    lm_dims = {k: getattr(lm_cfg, k) for k in
               ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings")}
    select = src_config.get("mm_vision_select_layer", -2)
    model_config = gpt4roi(
        vision_config=vision_dims, image_size=vision_config.image_size, select_layer=select,
        fuse_channels=plan["fuse_channels"], num_levels=plan["num_levels"], num_fuse=plan["num_fuse"],
        roi_output=plan["roi_output"], region_hidden=plan["region_hidden"],
        position_hidden=plan["position_hidden"], lm_config=lm_dims,
        # where the parts came from (the weights are all in the output): a pretrained LM, so the feedback loop
        # trains LoRA adapters on it (backend/feedback/retrain.py)
        vision_path=str(vision), lm_path=str(source),
    )
    expected = _expected_shapes(model_config, tokenizer, vision_config, lm_cfg)
    base = _Base(Path(delta_base)) if delta_base else None
    _check(shapes, expected, base.shapes if base else None)
    tower_shards, tower_shapes, tower_where = _all_shapes(vision)
    tower_names, tower_missing, tower_bad = _tower_keys(tower_shapes, expected)
    if tower_missing or tower_bad:
        raise ConversionError(f"{vision} is not the CLIP tower the checkpoint was built for, nothing written: "
                              f"missing {sorted(tower_missing)[:20]}, mismatched {sorted(tower_bad)[:20]}")

    tmp = out.with_name(f".{out.name}.converting-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        writer = ShardWriter(tmp, max_shard_bytes)
        for i, shard in enumerate(shards):
            for key in shard.shapes():
                if IGNORED.match(key):
                    continue
                tensor = shard.get(key)
                if base is not None and not ABSOLUTE.match(key):
                    tensor = apply_delta(key, tensor, base.get(key))
                else:  # a copy: the memory-mapped shard's pages are released when it closes, not at the next flush
                    tensor = tensor.clone()
                writer.add(target_name(key), tensor)
            shard.close()
            if progress:
                progress("gpt4roi shards", i + 1, len(shards))
        if base is not None:
            base.close()
        for i, shard in enumerate(tower_shards):  # the tower's weights as stored (fp16 in openai's release)
            for name, key in tower_names.items():
                if tower_where[key] == i:
                    writer.add(name, shard.get(key))
            shard.close()
        writer.finish()
        if progress:
            progress("tower", 1, 1)
        metadata = {"version": version or f"gpt4roi-{src_config.get('_name_or_path', source.name).split('/')[-1]}",
                    "converted_from": str(source), "delta_base": str(delta_base) if delta_base else None,
                    "tower": str(vision)}
        write_config(tmp, model_config, vision_config.to_dict(), lm_cfg.to_dict(), metadata)
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
