"""Tiny random Qwen2.5-VL checkpoints and reference outputs, made with HF transformers.

For each case below this writes, under OUT/<case>/:
  model/                      config.json (4.x flat or 5.x nested layout), safetensors weights (hub or
                              transformers-5 names, one file or shards + index), tokenizer files,
                              preprocessor_config.json, as a checkpoint directory armt loads;
  <chat>.safetensors          input_ids, pixel_values, image_grid_thw (from transformers' processor) and
                              logits (f32) of transformers' model reloaded from model/ for each chat.
Weights are random with every norm and bias perturbed away from 1 and 0, so no term hides.

Usage: python scripts/reference/model.py --out DIR [--chats tests/fixtures/chats] [--cases a,b]
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import processing  # noqa: E402  (the processing references: same inputs for both sides)

VOCAB = 151936  # covers the real Qwen tokenizer (151665 ids), as the 3B checkpoint does
# Small pixel bounds keep the vision work of the tests small (the 7B checkpoint allows 12.8 Mpx).
MIN_PIXELS, MAX_PIXELS = 3136, 200704

# Two unrelated sizes, so nothing in the port can be tuned to one of them.
CASES = {
    "tiny-hub": dict(
        weights="hub", config="flat", shards=1, tie=False, seed=1,
        text=dict(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-6, mrope_section=[2, 3, 3]),
        vision=dict(depth=4, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                    window_size=56, fullatt_block_indexes=[1, 3], tokens_per_second=2),
    ),
    "tiny-t5-sharded": dict(
        weights="transformers5", config="nested", shards=3, tie=True, seed=2,
        # A subset keeps the reference files small (full-vocab f32 logits are 0.6 MB a token).
        chats=["c01", "c02", "c05", "c07"],
        text=dict(hidden_size=96, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, rms_norm_eps=1e-5, mrope_section=[4, 2, 2]),
        vision=dict(depth=3, hidden_size=48, intermediate_size=64, num_heads=3, out_hidden_size=96,
                    window_size=112, fullatt_block_indexes=[2], tokens_per_second=2),
    ),
}


def build_config(case):
    t = dict(case["text"])
    section = t.pop("mrope_section")
    text_config = dict(t, vocab_size=VOCAB, rope_theta=1000000.0,
                       rope_scaling={"type": "mrope", "mrope_section": section})
    vision_config = dict(case["vision"])
    if case["config"] == "nested":
        # A hub config (4.x names) loaded and saved again by transformers 5.x: the vision config
        # then carries the old `in_chans` beside 5.x's `in_channels`, as real re-saved checkpoints do.
        vision_config["in_chans"] = 3
    return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config,
                            tie_word_embeddings=case["tie"])


def perturb_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "layernorm" in name \
                    or name.endswith("norm.weight") or "ln_q" in name:
                p.copy_(1.0 + 0.3 * noise)  # no norm sits at 1
            elif name.endswith(".bias"):
                p.copy_(0.2 * noise)  # no bias at 0
            else:
                fan_in = p.shape[1] if p.dim() >= 2 else 1
                if p.dim() == 5:  # conv3d patch embedding: fan-in over C*T*P*P
                    fan_in = p[0].numel()
                if "embed_tokens" in name:
                    fan_in = 1.0
                p.copy_(noise / fan_in ** 0.5)


def flat_config_json(config):
    """The 4.x hub layout: text fields at the top level, rope in rope_scaling."""
    d = config.to_dict()
    text = d.pop("text_config")
    rope = text.pop("rope_parameters", None) or {}
    for k in ("model_type", "layer_types"):
        text.pop(k, None)
    out = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"}
    out.update(text)
    out["rope_theta"] = rope.get("rope_theta", 1000000.0)
    out["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
              "tie_word_embeddings"):
        out[k] = d[k]
    vision = d["vision_config"]
    vision.pop("model_type", None)
    vision["in_chans"] = vision.pop("in_channels", 3)
    out["vision_config"] = vision
    out["torch_dtype"] = "float32"
    return out


def save_checkpoint(model, config, case, out):
    os.makedirs(out, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if case["tie"]:
        state.pop("lm_head.weight", None)  # shared with the embeddings
    if case["weights"] == "hub":
        renamed = {}
        for k, v in state.items():
            if k.startswith("model.visual."):
                k = "visual." + k[len("model.visual."):]
            elif k.startswith("model.language_model."):
                k = "model." + k[len("model.language_model."):]
            renamed[k] = v
        state = renamed
    names = sorted(state)
    n = case["shards"]
    if n == 1:
        save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i in range(n):
            fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            part = {k: state[k] for k in names[i::n]}
            save_file(part, os.path.join(out, fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        total = sum(v.numel() * v.element_size() for v in state.values())
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if case["config"] == "flat":
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(flat_config_json(config), f, indent=2)
    else:
        config.save_pretrained(out)
    tok = os.environ.get("ARMT_TOKENIZER_DIR")
    if not tok:
        sys.exit("ARMT_TOKENIZER_DIR is not set: source ~/.cache/armt/env.sh (written by scripts/setup)")
    # Tokenizer files and preprocessor_config.json, as the processing references write them.
    processing.make_model_dir(Path(out), Path(tok), MIN_PIXELS, MAX_PIXELS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--chats", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "chats"))
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    chats = sorted(f for f in os.listdir(args.chats) if f.endswith(".json"))
    for name in args.cases.split(","):
        case = CASES[name]
        torch.manual_seed(case["seed"])
        config = build_config(case)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
        perturb_(model, case["seed"])
        case_dir = os.path.join(args.out, name)
        model_dir = os.path.join(case_dir, "model")
        save_checkpoint(model, config, case, model_dir)
        # Reload what was written: the reference is what transformers reads from these files.
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        for chat in chats:
            if "chats" in case and not any(chat.startswith(c) for c in case["chats"]):
                continue
            enc = processing.encode_chat(model_dir, os.path.join(args.chats, chat))
            input_ids = torch.as_tensor(enc["input_ids"]).long().view(1, -1)
            kwargs = {}
            if enc.get("pixel_values") is not None and len(enc["pixel_values"]) > 0:
                kwargs["pixel_values"] = torch.as_tensor(enc["pixel_values"]).float()
                kwargs["image_grid_thw"] = torch.as_tensor(enc["image_grid_thw"]).long().view(-1, 3)
                # transformers 5 builds M-RoPE positions only when told which tokens are image tokens
                # (text 0, image 1), as its processor does; without it images get 1-D positions.
                kwargs["mm_token_type_ids"] = (input_ids == config.image_token_id).int()
            with torch.no_grad():
                logits = model(input_ids=input_ids, **kwargs).logits[0].float()
            tensors = {"input_ids": input_ids[0].contiguous(), "logits": logits.contiguous()}
            if kwargs:
                tensors["pixel_values"] = kwargs["pixel_values"].contiguous()
                tensors["position_ids"] = model.model.get_rope_index(
                    input_ids, kwargs["mm_token_type_ids"], kwargs["image_grid_thw"])[0][:, 0].contiguous()
                tensors["image_grid_thw"] = kwargs["image_grid_thw"].contiguous()
            save_file(tensors, os.path.join(case_dir, chat[:-5] + ".safetensors"))
            print(f"{name}/{chat}: {input_ids.shape[1]} tokens, "
                  f"{0 if not kwargs else kwargs['pixel_values'].shape[0]} patches")


if __name__ == "__main__":
    main()
