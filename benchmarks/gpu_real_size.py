"""The `gpt4roi` preset's shape on a GPU, random weights in bf16: regions/s and per-region latency of short captions at
16 boxes per image, batched `RegionDescriber.describe` against the naive loop (`naive=True`), in the same run; p50/p95
of one new box on a new image and on a seen (cached) image; peak GPU memory.

    .venv/bin/python benchmarks/gpu_real_size.py [--image-size 224|336] [--boxes 16] [--max-new-tokens 12]
                                                 [--images 6] [--repeats 3] [--naive-images 2]
    .venv/bin/python benchmarks/gpu_real_size.py --smoke     # same code path, tiny widths, CPU allowed

The model is `model.config.gpt4roi()` built from configs, nothing downloaded: CLIP ViT-L/14 (24 layers, width 1024,
224 px; 336 as a variant), GPT4RoI's region module (4 levels at hidden states 14/17/20/23, 1,024 fuse channels, 5
shuffle rounds, RoIAlign 14, region width 1024), 256 image tokens and LLaMA-7B (32 layers, width 4096, MLP 11008, 32
heads, vocabulary 32006), all in bfloat16 on the GPU: what `regionscribe convert gpt4roi` produces, with random
weights. The tokenizer is the project's byte-level BPE padded with unused tokens to the LM's 32006 rows.
Random weights almost never produce `</s>`, so every caption runs the full --max-new-tokens: the figures are the
cost of captions of exactly that length. Target (issue 6): >= 50 regions/s on one H100 with 16 boxes per image.

Without a CUDA device (and without --smoke) it prints {"skipped": true, "reason": ...} and exits 0;
`--smoke --device cpu` runs the same code path at toy widths on the CPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from regionscribe.model.config import CLIP_VIT_L14, LLAMA_7B as LLAMA_7B_DIMS

TARGET_REGIONS_PER_S = 50.0
LM_VOCAB = 32006  # LLaMA's 32000 and GPT4RoI's six added tokens

VIT_L_14 = {k: v for k, v in CLIP_VIT_L14.items() if k != "image_size"}
LLAMA_7B = dict(LLAMA_7B_DIMS, vocab_size=LM_VOCAB)
# --smoke: the same structure at toy widths (12 ViT layers so that the 4-level pyramid exists), for shape errors
SMOKE_VIT = dict(VIT_L_14, hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4,
                 projection_dim=64)
SMOKE_LM = dict(LLAMA_7B, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4)
SMOKE_REGION = dict(fuse_channels=64, gn_groups=8, roi_output=7, region_hidden=128, position_hidden=32)


def padded_tokenizer(vocab: int = LM_VOCAB):
    """The project's BPE tokenizer, with the region tokens, padded with unused tokens to exactly `vocab` entries."""
    from regionscribe.training.corpus import vocabulary_text
    from regionscribe.model.tokenizer import add_region_tokens, train_tokenizer

    tok = train_tokenizer(vocabulary_text(), vocab_size=vocab)
    add_region_tokens(tok)
    missing = vocab - len(tok)
    if missing < 0:
        raise ValueError(f"tokenizer has {len(tok)} entries, more than the LM's {vocab}")
    tok.add_tokens([f"<unused{i}>" for i in range(missing)])
    assert len(tok) == vocab
    return tok


def build(image_size: int = 224, smoke: bool = False, device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """RegionScribeModel of the real-size architecture (or --smoke widths) with random weights, built directly on
    `device` in `dtype` (no fp32 copy on the host)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from regionscribe.model.config import gpt4roi
    from regionscribe.model.modeling import RegionScribeModel

    vit = dict(SMOKE_VIT if smoke else VIT_L_14, image_size=image_size)
    lm = dict(SMOKE_LM if smoke else LLAMA_7B)
    lm_dims = {k: v for k, v in lm.items() if k != "vocab_size"}
    cfg = gpt4roi(preset="gpt4roi-random", vision_config=vit, lm_config=lm_dims, image_size=image_size,
                  dtype=str(dtype).removeprefix("torch."), **(SMOKE_REGION if smoke else {}))
    tokenizer = padded_tokenizer(lm["vocab_size"])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            vision = CLIPVisionModel(CLIPVisionConfig(**vit))
            language = LlamaForCausalLM(LlamaConfig(**lm))
            model = RegionScribeModel(cfg, tokenizer, vision=vision, lm=language)
    finally:
        torch.set_default_dtype(previous)
    model.to(device=device, dtype=dtype)  # anything a constructor put elsewhere
    return model.eval()


def boxes_for(image_size: tuple[int, int], n: int, seed: int) -> list[tuple[float, float, float, float]]:
    """n distinct boxes: a 4x4 grid of cells, each shrunk a little differently per image."""
    w, h = image_size
    out = []
    for k in range(n):
        i, j = k % 4, (k // 4) % 4
        m = 1 + (k + seed) % 3
        out.append((i * w / 4 + m, j * h / 4 + m, (i + 1) * w / 4 - m, (j + 1) * h / 4 - m))
    return out


def _timed(fn, sync: bool) -> float:
    if sync:
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(model, boxes: int, max_new_tokens: int, images: int, repeats: int, naive_images: int,
            sync: bool) -> dict:
    from regionscribe.model.asks import Asks
    from regionscribe.training.corpus import make_scenes
    from regionscribe.model.describer import RegionDescriber

    d = RegionDescriber(model, "real-random", cache_size=0)
    asks = Asks(caption=True, max_new_tokens=max_new_tokens)
    scenes = make_scenes("test", max(images, naive_images), seed=321, image_size=(448, 448))
    for s in scenes[:2]:  # warm-up: kernels, allocator
        d.describe(s.image, boxes_for(s.image.size, boxes, 0), asks)
    batched, naive, tokens = [], [], []
    for r in range(repeats):
        for k, s in enumerate(scenes[:images]):
            bx = boxes_for(s.image.size, boxes, k + r)
            out = {}
            batched.append(_timed(lambda: out.setdefault("d", d.describe(s.image, bx, asks)), sync))
            tokens.append(sum(len(model.tokenizer(reg.caption or "")["input_ids"]) for reg in out["d"].regions))
    for k, s in enumerate(scenes[:naive_images]):
        bx = boxes_for(s.image.size, boxes, k)
        naive.append(_timed(lambda: d.describe(s.image, bx, asks, naive=True), sync))
    # the interactive case: one new box on an image whose features are cached
    d.cache_size = 8
    one_cold, one_warm = [], []
    for k, s in enumerate(scenes[:images]):
        one_cold.append(_timed(lambda: d.describe(s.image, boxes_for(s.image.size, 1, k), asks, image_key=f"i{k}"),
                               sync))
        one_warm.append(_timed(lambda: d.describe(s.image, boxes_for(s.image.size, 1, k + 1), asks,
                                                  image_key=f"i{k}"), sync))
    mb = statistics.median(batched)
    out = {
        "batched": {"image_seconds_median": round(mb, 4), "per_region_ms": round(1000 * mb / boxes, 2),
                    "regions_per_s": round(boxes / mb, 1), "samples": len(batched)},
        "caption_tokens_per_region_mean": round(statistics.mean(tokens) / boxes, 1) if tokens else None,
        "single_new_box_ms": {"new_image_p50": round(1000 * statistics.median(one_cold), 1),
                              "new_image_p95": round(1000 * _p95(one_cold), 1),
                              "seen_image_p50": round(1000 * statistics.median(one_warm), 1),
                              "seen_image_p95": round(1000 * _p95(one_warm), 1), "samples": len(one_cold)},
    }
    if naive:
        mn = statistics.median(naive)
        out["naive"] = {"image_seconds_median": round(mn, 4), "per_region_ms": round(1000 * mn / boxes, 2),
                        "regions_per_s": round(boxes / mn, 1), "samples": len(naive)}
        out["speedup_batched_over_naive"] = round(mn / mb, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=224, choices=[224, 336], help="CLIP ViT-L/14 input size")
    ap.add_argument("--boxes", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=12, help="caption length (random weights: always reached)")
    ap.add_argument("--images", type=int, default=12, help="images (also the samples of the single-box p50/p95)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-images", type=int, default=2, help="images for the naive baseline (0: skip it)")
    ap.add_argument("--smoke", action="store_true", help="toy widths, same code path; runs on CPU too")
    ap.add_argument("--device", default=None, help="default: cuda (--smoke: cuda if available, else cpu)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                    help="default: bfloat16 (float32 for --smoke on CPU, where bf16 matmuls are slow)")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print(json.dumps({"skipped": True, "reason": "no CUDA device (torch.cuda.is_available() is False): the "
                          "real-size model (7B LM + ViT-L/14 in bf16, about 14 GB) needs a GPU; `--smoke` runs the "
                          "same code path at toy widths on CPU", "torch": torch.__version__,
                          "torch_cuda_build": torch.version.cuda}))
        return 0
    device = args.device or ("cuda" if cuda else "cpu")
    on_gpu = device.startswith("cuda")
    torch.manual_seed(0)
    started = time.perf_counter()
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    model = build(args.image_size, smoke=args.smoke, device=device, dtype=dtype)
    if on_gpu:
        torch.cuda.synchronize()
    build_s = time.perf_counter() - started
    params = {"vision": sum(p.numel() for p in model.vision.parameters()),
              "lm": sum(p.numel() for p in model.lm.parameters()),
              "region_encoder_and_projector": sum(p.numel() for p in model.region_encoder.parameters())
              + sum(p.numel() for p in model.projector.parameters())}
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    figures = measure(model, args.boxes, args.max_new_tokens, args.images, args.repeats, args.naive_images, on_gpu)
    result = {
        "benchmark": "gpu_real_size",
        "architecture": ("smoke (toy widths)" if args.smoke else
                         f"gpt4roi preset: CLIP ViT-L/14-{args.image_size} + LLaMA-7B (random weights)"),
        "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
        "parameters_millions": {k: round(v / 1e6, 1) for k, v in params.items()},
        "image_tokens": model.n_image_tokens,
        "boxes_per_image": args.boxes,
        "max_new_tokens": args.max_new_tokens,
        "build_seconds": round(build_s, 1),
        **figures,
        "target_regions_per_s": TARGET_REGIONS_PER_S,
        "meets_target": (figures["batched"]["regions_per_s"] >= TARGET_REGIONS_PER_S) if not args.smoke else None,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if on_gpu else None,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
