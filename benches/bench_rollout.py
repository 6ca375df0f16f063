"""Rollout throughput: armt's batched KV-cache sampling against transformers' `generate`, same
checkpoint and prompts, at several batch sizes, in one run. Prints generated tokens/s and ratios.

armt side: `armt rollout` over B copies of a zoom sample (n=1, one turn of T tokens); transformers
side: `generate(do_sample=True, temperature=1.0, min_new_tokens=T, max_new_tokens=T)` on the very
prompt ids (and pixels) armt built, left-padded into one batch.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "reference"))
import bench_forward  # noqa: E402  (the benchmark checkpoint)
import model as refmodel  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--armt", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,8,32")
    args = ap.parse_args()
    cfg = bench_forward.BENCH
    model_dir = os.path.join(args.work, "bench-model")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        torch.manual_seed(cfg["seed"])
        config = refmodel.build_config(cfg)
        m = Qwen2_5_VLForConditionalGeneration(config).eval()
        refmodel.perturb_(m, cfg["seed"])
        refmodel.save_checkpoint(m, config, cfg, model_dir)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    tools = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "tools", "zoom.yaml")
    print(f"model: text 6x512, vision 6x256; {args.tokens} sampled tokens per row; f32 CPU, "
          f"{torch.get_num_threads()} threads")
    print(f"{'batch':>5} {'armt tok/s':>11} {'transformers tok/s':>19} {'ratio':>7}")
    for b in [int(x) for x in args.batches.split(",")]:
        data = os.path.join(args.work, f"bench-{b}.jsonl")
        with open(data, "w") as f:
            for i in range(b):
                f.write(json.dumps({"id": f"s{i}", "task": "zoom", "prompt": "Which answer is right?\nAnswer 1: red.\nAnswer 2: blue." + " More detail." * (i % 4),
                                    "images": [os.path.abspath(args.image)], "judgment": {"type": "pair", "candidates": 2},
                                    "ground_truth": "1"}) + "\n")
        out = os.path.join(args.work, f"bench-{b}.traj.jsonl")
        res = subprocess.run([args.armt, "rollout", "--model", model_dir, "--data", data, "--tools", tools, "--n", "1",
                              "--batch", str(b), "--out", out, "--max-turns", "1", "--max-turn-tokens", str(args.tokens),
                              "--max-response-tokens", str(args.tokens), "--device", "cpu"],
                             check=True, capture_output=True, text=True)
        line = [l for l in res.stderr.splitlines() if l.startswith("armt rollout:")][-1]
        parts = line.split()
        armt_tokens, armt_s = int(parts[4]), float(parts[8].rstrip("s"))
        trajs = [json.loads(l) for l in open(out)]
        # Same prompts for transformers: left-padded ids, the same pixels for every row.
        prompts = [t["token_ids"][:t["prompt_len"]] for t in trajs]
        width = max(len(p) for p in prompts)
        pad = 151643
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        ip = Qwen2VLImageProcessor.from_pretrained(model_dir)
        enc_img = ip(images=[Image.open(args.image).convert("RGB")] * b, return_tensors="pt")
        kwargs = dict(pixel_values=enc_img["pixel_values"], image_grid_thw=enc_img["image_grid_thw"],
                      mm_token_type_ids=(ids == hf.config.image_token_id).int())
        with torch.no_grad():
            t0 = time.perf_counter()
            gen = hf.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              min_new_tokens=args.tokens, max_new_tokens=args.tokens, pad_token_id=pad, **kwargs)
            hf_s = time.perf_counter() - t0
        hf_tokens = (gen.shape[1] - width) * b
        a, h = armt_tokens / armt_s, hf_tokens / hf_s
        print(f"{b:>5} {a:>11.1f} {h:>19.1f} {a / h:>6.2f}x")


if __name__ == "__main__":
    main()
