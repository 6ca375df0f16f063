"""Forward-pass time of armt's port against transformers', same checkpoint and chat, in one run.

Builds a small random Qwen2.5-VL checkpoint (bigger than the test ones, so the matmuls dominate),
times transformers' forward (f32, CPU, median of N after a warm-up), runs `armt forward --repeat N`
on the same files, and prints both and the ratio.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "reference"))
import model as refmodel  # noqa: E402
import processing  # noqa: E402

BENCH = dict(
    weights="hub", config="flat", shards=1, tie=False, seed=3,
    text=dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
              num_key_value_heads=2, rms_norm_eps=1e-6, mrope_section=[8, 12, 12]),
    vision=dict(depth=6, hidden_size=256, intermediate_size=688, num_heads=4, out_hidden_size=512,
                window_size=112, fullatt_block_indexes=[2, 5], tokens_per_second=2),
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--armt", required=True, help="path to the armt binary")
    ap.add_argument("--work", required=True)
    ap.add_argument("--chat", required=True)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(BENCH["seed"])
    model_dir = os.path.join(args.work, "bench-model")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        config = refmodel.build_config(BENCH)
        m = Qwen2_5_VLForConditionalGeneration(config).eval()
        refmodel.perturb_(m, BENCH["seed"])
        refmodel.save_checkpoint(m, config, BENCH, model_dir)
        # A larger pixel budget, so the vision tower has real work.
        processing.make_model_dir(Path(model_dir), Path(os.environ["ARMT_TOKENIZER_DIR"]), refmodel.MIN_PIXELS, 602112)
    m = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    enc = processing.encode_chat(model_dir, args.chat)
    ids = torch.as_tensor(enc["input_ids"]).long().view(1, -1)
    kw = {}
    if enc.get("pixel_values") is not None and len(enc["pixel_values"]) > 0:
        kw = dict(pixel_values=torch.as_tensor(enc["pixel_values"]).float(),
                  image_grid_thw=torch.as_tensor(enc["image_grid_thw"]).long().view(-1, 3),
                  mm_token_type_ids=(ids == m.config.image_token_id).int())
    times = []
    with torch.no_grad():
        m(input_ids=ids, **kw)
        for _ in range(args.repeat):
            t = time.perf_counter()
            m(input_ids=ids, **kw)
            times.append(time.perf_counter() - t)
    hf_ms = statistics.median(times) * 1e3
    out = subprocess.run([args.armt, "forward", "--model", model_dir, "--chat", args.chat, "--out",
                          os.path.join(args.work, "bench-out.safetensors"), "--device", "cpu",
                          "--repeat", str(args.repeat)], check=True, capture_output=True, text=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("forward_median_ms"))
    armt_ms = float(line.split()[1])
    n_patches = 0 if not kw else kw["pixel_values"].shape[0]
    print(f"config: text 6x512 (GQA 8/2), vision 6x256; {ids.shape[1]} tokens, {n_patches} patches; "
          f"f32 CPU, {torch.get_num_threads()} threads, median of {args.repeat}")
    print(f"transformers {torch.__version__}/{__import__('transformers').__version__}: {hf_ms:8.1f} ms")
    print(f"armt forward:                 {armt_ms:8.1f} ms")
    print(f"ratio transformers/armt: {hf_ms / armt_ms:.2f}x (above 1 = armt faster)")


if __name__ == "__main__":
    main()
