"""A GRPO step's rollout on the CPU: P prompts with an image, n samples each, T tokens per sample.
armt (`armt rollout --n n`: each prompt and its image processed once, rows decoded together with
continuous batching) against transformers' `generate(num_return_sequences=n)` on the same checkpoint
and the very prompt ids and pixels armt built, in one run. Prints generated tokens/s of both and, as
its last line, `speed-up vs transformers: X.XX×` (armt tokens/s ÷ transformers tokens/s).
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "scripts", "reference"))
import bench_forward  # noqa: E402  (the benchmark checkpoint)
import model as refmodel  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--armt", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--image-scale", type=float, default=4.0,
                    help="the image is enlarged by this factor first (4: 600x480, about 360 image tokens, "
                         "a modest reward-model image; ARM-Thinker allows up to 1 MP)")
    args = ap.parse_args()
    # The image goes into the work folder with the data (armt keeps a dataset's files inside
    # its folder), enlarged first when asked.
    src = Image.open(args.image).convert("RGB")
    size = (round(src.width * args.image_scale), round(src.height * args.image_scale))
    scaled = os.path.join(args.work, f"bench-image-{size[0]}x{size[1]}.png")
    (src if size == src.size else src.resize(size, Image.BICUBIC)).save(scaled)
    args.image = scaled
    cfg = bench_forward.BENCH
    model_dir = os.path.join(args.work, "bench-model")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        torch.manual_seed(cfg["seed"])
        config = refmodel.build_config(cfg)
        m = Qwen2_5_VLForConditionalGeneration(config).eval()
        refmodel.perturb_(m, cfg["seed"])
        refmodel.save_checkpoint(m, config, cfg, model_dir)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    tools = os.path.join(HERE, "..", "configs", "tools", "zoom.yaml")
    p, n, t = args.prompts, args.n, args.tokens
    data = os.path.join(args.work, "grpo.jsonl")
    with open(data, "w") as f:
        for i in range(p):
            f.write(json.dumps({"id": f"g{i}", "task": "zoom",
                                "prompt": "Which answer is right?\nAnswer 1: red.\nAnswer 2: blue." + " More detail." * i,
                                "images": [os.path.abspath(args.image)], "judgment": {"type": "pair", "candidates": 2},
                                "ground_truth": "1"}) + "\n")
    out = os.path.join(args.work, "grpo.traj.jsonl")
    res = subprocess.run([args.armt, "rollout", "--model", model_dir, "--data", data, "--tools", tools, "--n", str(n),
                          "--batch", str(p), "--max-rows", str(p * n), "--out", out, "--max-turns", "1",
                          "--max-turn-tokens", str(t), "--max-response-tokens", str(t), "--device", "cpu"],
                         check=True, capture_output=True, text=True)
    line = [l for l in res.stderr.splitlines() if l.startswith("armt rollout:")][0]
    parts = line.split()
    armt_tokens, armt_s = int(parts[4]), float(parts[8].rstrip("s"))
    trajs = [json.loads(l) for l in open(out)]
    # The same prompts for transformers (one per group), left-padded, one image each.
    prompts = [trajs[g * n]["token_ids"][:trajs[g * n]["prompt_len"]] for g in range(p)]
    width = max(len(q) for q in prompts)
    pad = 151643
    ids = torch.tensor([[pad] * (width - len(q)) + q for q in prompts])
    mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in prompts])
    ip = Qwen2VLImageProcessor.from_pretrained(model_dir)
    enc = ip(images=[Image.open(args.image).convert("RGB")] * p, return_tensors="pt")
    kwargs = dict(pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"],
                  mm_token_type_ids=(ids == hf.config.image_token_id).int())
    sample = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=pad)
    with torch.no_grad():
        hf.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=2,  # warm-up
                    **dict(kwargs, pixel_values=enc["pixel_values"][: int(enc["image_grid_thw"][0].prod())],
                           image_grid_thw=enc["image_grid_thw"][:1], mm_token_type_ids=kwargs["mm_token_type_ids"][:1]),
                    **sample)
        t0 = time.perf_counter()
        gen = hf.generate(input_ids=ids, attention_mask=mask, num_return_sequences=n, min_new_tokens=t,
                          max_new_tokens=t, **sample, **kwargs)
        hf_s = time.perf_counter() - t0
    hf_tokens = (gen.shape[1] - width) * gen.shape[0]
    a, h = armt_tokens / armt_s, hf_tokens / hf_s
    prompt_lens = sorted(len(q) for q in prompts)
    print(f"model: text 6x512, vision 6x256, vocab {hf.config.text_config.vocab_size}; {p} prompts "
          f"({prompt_lens[0]}-{prompt_lens[-1]} tokens, one image each) x n={n} x {t} tokens; f32 CPU, "
          f"{torch.get_num_threads()} threads; load {os.getloadavg()[0]:.1f}")
    print(f"armt:         {armt_tokens:>6} tokens in {armt_s:6.2f}s = {a:8.1f} tokens/s")
    print(f"transformers: {hf_tokens:>6} tokens in {hf_s:6.2f}s = {h:8.1f} tokens/s")
    print(f"speed-up vs transformers: {a / h:.2f}×")


if __name__ == "__main__":
    main()
