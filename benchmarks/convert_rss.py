"""Peak memory of `regionscribe convert gpt4roi` against the size of the largest input shard.

Builds a synthetic GPT4RoI checkpoint (GPT4RoI's key names and module tree, narrower, random fp16 weights) of a few
hundred MB in two HF .bin shards, plus a LLaMA-shaped base of the same layout (for `--delta-base`) and a small CLIP
folder. Each measurement runs in a fresh process: imports first, then the peak resident set is reset
(/proc/self/clear_refs) and the job runs, so the figure is what the job itself added on top of the imported libraries
(transformers' lazily imported model classes included: they alone are about 120 MB).

    .venv/bin/python benchmarks/convert_rss.py [--hidden 1024] [--layers 8] [--out-shard-mb 128]

Measured in the same run:
  - convert: the streaming converter (plain, and with the delta base)
  - naive: what a whole-model tool does (GPT4RoI's apply_delta.py loads both models whole): every source shard read
    into memory (and the base's, for the delta), then one output file written.
Prints JSON: shard sizes, peak RSS above the imports for each, and the ratios peak / largest input shard.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1024 ** 2

_CHILD = textwrap.dedent("""
    import json, sys, resource
    sys.path.insert(0, {root!r})
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
    from regionscribe.model.gpt4roi import convert
    from regionscribe.model.modeling import RegionScribeModel
    from regionscribe.model.weights import shard_files

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    base_rss = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    job = {job!r}
    if job == "convert":
        convert({src!r}, {tower!r}, {out!r}, delta_base={base!r}, max_shard_bytes={shard!r})
    else:  # naive: everything in memory at once, one output file
        state = {{}}
        for p in shard_files({src!r}):
            state.update(torch.load(p, map_location="cpu", weights_only=True))
        if {base!r}:
            base = {{}}
            for p in shard_files({base!r}):
                base.update(torch.load(p, map_location="cpu", weights_only=True))
            for k, v in base.items():
                if k in state:
                    state[k][tuple(slice(0, n) for n in v.shape)] += v
        save_file({{k: v.contiguous() for k, v in state.items()}}, {out!r} + ".safetensors")
    print(json.dumps({{"imports_rss": base_rss, "peak_rss": status("VmHWM")}}))
""")


def build(folder: Path, hidden: int, layers: int, vocab: int = 32006) -> tuple[Path, Path, Path]:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    g = torch.Generator().manual_seed(0)
    inter = int(hidden * 2.75)
    fuse, roi, region, pos, clip = 128, 14, 1024, 256, 64

    def r(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()

    sd = {"model.embed_tokens.weight": r(vocab, hidden), "model.norm.weight": r(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in "qkvo":
            sd[p + f"self_attn.{n}_proj.weight"] = r(hidden, hidden)
        sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"] = r(inter, hidden), r(inter, hidden)
        sd[p + "mlp.down_proj.weight"] = r(hidden, inter)
        sd[p + "input_layernorm.weight"], sd[p + "post_attention_layernorm.weight"] = r(hidden), r(hidden)
    sd["lm_head.weight"] = r(vocab, hidden)
    base = {k: v.clone() for k, v in sd.items()}
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        base[k] = base[k][: vocab - 6].clone()
    m = "model.spi_module."
    sd["model.mm_projector.weight"], sd["model.mm_projector.bias"] = r(hidden, clip), r(hidden)
    for lvl in range(4):
        sd[m + f"mlvl_fuse.input_conv.{lvl}.weight"], sd[m + f"mlvl_fuse.input_conv.{lvl}.bias"] = \
            r(fuse, clip + 2, 1, 1), r(fuse)
        sd[m + f"roi_align.pconvs.{lvl}.weight"], sd[m + f"roi_align.pconvs.{lvl}.bias"] = r(fuse, fuse, 3, 3), r(fuse)
    for k in range(5):
        sd[m + f"mlvl_fuse.fuse_convs.{k}.conv.weight"] = r(fuse, fuse, 3, 3)
        sd[m + f"mlvl_fuse.fuse_convs.{k}.gn.weight"], sd[m + f"mlvl_fuse.fuse_convs.{k}.gn.bias"] = r(fuse), r(fuse)
    for j, (o, i) in {0: (pos, 4), 3: (region, pos)}.items():
        sd[m + f"roi_align.pos_embedd.{j}.weight"], sd[m + f"roi_align.pos_embedd.{j}.bias"] = r(o, i), r(o)
    for j, n in {2: pos, 5: region}.items():
        sd[m + f"roi_align.pos_embedd.{j}.weight"], sd[m + f"roi_align.pos_embedd.{j}.bias"] = r(n), r(n)
    sd[m + "roi_align.flatten_linear.weight"] = r(region, fuse * roi * roi)
    sd[m + "roi_align.flatten_linear.bias"] = r(region)
    sd[m + "roi_align.updims.weight"], sd[m + "roi_align.updims.bias"] = r(hidden, region), r(hidden)

    def save_two_shards(path: Path, state: dict) -> None:
        path.mkdir()
        keys, total, half, first = list(state), sum(v.numel() * 2 for v in state.values()), 0, {}
        for k in keys:  # split by bytes, as HF's sharding does
            if half < total / 2:
                first[k] = state[k]
                half += state[k].numel() * 2
        second = {k: v for k, v in state.items() if k not in first}
        names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
        for name, part in zip(names, (first, second)):
            torch.save(part, path / name)
        weight_map = {k: names[0] if k in first else names[1] for k in keys}
        (path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    src, base_dir, tower = folder / "gpt4roi", folder / "llama", folder / "clip"
    save_two_shards(src, sd)
    save_two_shards(base_dir, base)
    (src / "config.json").write_text(json.dumps({
        "model_type": "llava", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": hidden // 128, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 2048, "tie_word_embeddings": False, "mm_hidden_size": clip,
        "mm_vision_select_layer": -2}))
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(vocab - 9)}}  # a LLaMA stand-in
    wl = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=wl, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.add_tokens(["<im_patch>", "<bbox>", "<point>", "<im_start>", "<im_end>"], special_tokens=True)
    tok.save_pretrained(src)
    CLIPVisionModel(CLIPVisionConfig(image_size=224, patch_size=14, hidden_size=clip, intermediate_size=128,
                                     num_hidden_layers=12, num_attention_heads=4)).half().save_pretrained(tower)
    return src, base_dir, tower


def run(job: str, src: Path, tower: Path, out: Path, base: Path | None, shard: int) -> dict:
    code = _CHILD.format(root=str(ROOT), job=job, src=str(src), tower=str(tower), out=str(out),
                         base=str(base) if base else None, shard=shard)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if res.returncode:
        raise SystemExit(f"{job} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--out-shard-mb", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src, base, tower = build(d, args.hidden, args.layers)
        in_shards = sorted((p.name, p.stat().st_size) for p in src.glob("*.bin"))
        largest = max(s for _, s in in_shards)
        result = {"input_shards_mb": {n: round(s / MB, 1) for n, s in in_shards},
                  "output_shard_cap_mb": args.out_shard_mb}
        shard = args.out_shard_mb * MB
        for label, job, b in (("convert", "convert", None), ("convert_delta", "convert", base),
                              ("naive", "naive", None), ("naive_delta", "naive", base)):
            out = d / f"out-{label}"
            m = run(job, src, tower, out, b, shard)
            added = m["peak_rss"] - m["imports_rss"]
            result[label] = {"peak_rss_mb": round(m["peak_rss"] / MB, 1),
                             "imports_rss_mb": round(m["imports_rss"] / MB, 1),
                             "added_mb": round(added / MB, 1), "added_over_largest_shard": round(added / largest, 2)}
            if job == "convert":
                outs = list(out.glob("*.safetensors"))
                result[label]["output_shards"] = len(outs)
                result[label]["largest_output_shard_mb"] = round(max(p.stat().st_size for p in outs) / MB, 1)
        result["largest_input_shard_mb"] = round(largest / MB, 1)
        result["convert_vs_naive"] = round(result["convert"]["added_mb"] / result["naive"]["added_mb"], 2)
        result["convert_delta_vs_naive_delta"] = round(
            result["convert_delta"]["added_mb"] / result["naive_delta"]["added_mb"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
