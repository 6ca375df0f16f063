#!/usr/bin/env python3
"""Reference inputs for armt-processing, produced by HF transformers (not by our code).

For each chat JSON (format of `armt forward --chat`), this renders the chat with transformers'
Jinja renderer and `configs/chat_template.jinja`, then runs `Qwen2_5_VLProcessor` with the
PIL-backed slow image processor (`Qwen2VLImageProcessorPil`) and the tokenizer loaded from the
model dir's tokenizer.json. Output per chat: `<name>.safetensors` (input_ids int64 [L],
pixel_values float32 [N, D], image_grid_thw int64 [n, 3]) and `<name>.json` (rendered text plus
renderings by the official Qwen2.5-VL / Qwen2.5 Hermes templates where they apply).

Importable: `encode_chat(model_dir, chat_path) -> dict` (used by the model reference script).

Usage:
  $ARMT_PYTHON scripts/reference/processing.py --tokenizer-dir "$ARMT_TOKENIZER_DIR" \
      --out "$ARMT_REFS/processing" tests/fixtures/chats/*.json
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = REPO / "configs" / "chat_template.jinja"
OFFICIAL_VL = REPO / "tests" / "fixtures" / "templates" / "qwen2.5-vl.jinja"
OFFICIAL_HERMES = REPO / "tests" / "fixtures" / "templates" / "qwen2.5-instruct.jinja"
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
VL_DEFAULT_SYSTEM = "You are a helpful assistant."
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"]


def make_model_dir(dst: Path, tokenizer_dir: Path, min_pixels: int, max_pixels: int) -> Path:
    """A model-like dir: tokenizer files + a preprocessor_config.json with the given pixel bounds."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copyfile(tokenizer_dir / name, dst / name)
    cfg = {
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (dst / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return dst


def load_chat(chat_path: Path):
    """Parses a chat file the way armt-processing does; returns (messages, tools, add_gen, images).

    Image parts keep their dicts (the templates only test for the keys); the PIL images are
    returned in order of appearance. Tool-call arguments given as JSON strings are parsed,
    as the Rust loader does, so both sides render an object.
    """
    from PIL import Image

    chat = json.loads(chat_path.read_text(encoding="utf-8"))
    base = chat_path.parent
    messages = copy.deepcopy(chat["messages"])
    images = []
    for m in messages:
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call)
            if isinstance(fn.get("arguments"), str):
                fn["arguments"] = json.loads(fn["arguments"])
        if m.get("content") is None:
            m["content"] = ""
        if isinstance(m["content"], list):
            for part in m["content"]:
                if part.get("type") in ("image", "image_url") or "image" in part or "image_url" in part:
                    ref = part.get("image")
                    if ref is None:
                        url = part["image_url"]
                        ref = url["url"] if isinstance(url, dict) else url
                    ref = ref[len("file://"):] if ref.startswith("file://") else ref
                    img = Image.open(base / ref)
                    img.load()
                    images.append(img)
    return messages, chat.get("tools") or None, bool(chat.get("add_generation_prompt", False)), images


def render(template: str, messages, tools, add_generation_prompt: bool) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], tools=tools, chat_template=template, add_generation_prompt=add_generation_prompt
    )
    return rendered[0]


_PROCESSORS: dict = {}


def build_processor(model_dir: Path):
    key = str(Path(model_dir).resolve())
    if key not in _PROCESSORS:
        from transformers import AutoTokenizer
        from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        cfg = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
        known = {"min_pixels", "max_pixels", "size", "patch_size", "temporal_patch_size", "merge_size",
                 "image_mean", "image_std", "do_resize", "do_rescale", "rescale_factor", "do_normalize",
                 "do_convert_rgb", "resample"}
        image_processor = Qwen2VLImageProcessorPil(**{k: v for k, v in cfg.items() if k in known})
        from transformers.video_processing_utils import BaseVideoProcessor

        class NoVideoProcessor(BaseVideoProcessor):
            """Placeholder: the processor insists on a video processor, but the real one needs
            torchvision (not installed) and no fixture contains video."""

        class ImageOnlyProcessor(Qwen2_5_VLProcessor):
            """Without torchvision, transformers' BaseVideoProcessor resolves to a dummy class and
            the constructor's type check rejects any video processor; only that check is relaxed
            for the video slot. Text and image paths are untouched."""

            def check_argument_for_proper_class(self, argument_name, argument):
                if argument_name == "video_processor":
                    return type(argument)
                return super().check_argument_for_proper_class(argument_name, argument)

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        processor = ImageOnlyProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=NoVideoProcessor(),
            chat_template=CHAT_TEMPLATE.read_text(),
        )
        _PROCESSORS[key] = processor
    return _PROCESSORS[key]


def encode_chat(model_dir, chat_path) -> dict:
    """Transformers' model inputs for a chat file.

    Returns {"text": rendered template (one <|image_pad|> per image), "input_ids": int64 [L],
    "pixel_values": float32 [N, 1176] (or [0, 1176]), "image_grid_thw": int64 [n, 3]}.
    """
    model_dir, chat_path = Path(model_dir), Path(chat_path)
    processor = build_processor(model_dir)
    messages, tools, add_gen, images = load_chat(chat_path)
    text = render(CHAT_TEMPLATE.read_text(), messages, tools, add_gen)
    out = processor(text=[text], images=images or None, return_tensors="np")
    ids = np.asarray(out["input_ids"][0], dtype=np.int64)
    ip = processor.image_processor
    dim = 3 * ip.temporal_patch_size * ip.patch_size * ip.patch_size
    if images:
        pixel_values = np.ascontiguousarray(out["pixel_values"], dtype=np.float32)
        grid = np.asarray(out["image_grid_thw"], dtype=np.int64).reshape(-1, 3)
    else:
        pixel_values = np.zeros((0, dim), dtype=np.float32)
        grid = np.zeros((0, 3), dtype=np.int64)
    # Independent cross-check of the tokenizer path: the raw `tokenizers` library on the same
    # tokenizer.json, no special tokens added. A mismatch means transformers altered the tokenizer.
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    expanded = processor.tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    raw_ids = raw.encode(expanded, add_special_tokens=False).ids
    if raw_ids != ids.tolist():
        raise RuntimeError(f"{chat_path}: transformers and tokenizers disagree on input_ids")
    return {"text": text, "input_ids": ids, "pixel_values": pixel_values, "image_grid_thw": grid}


def official_renderings(chat_path: Path) -> dict:
    """Renderings by the official templates, for the chats where each applies.

    - Qwen2.5-VL: chats without tools, tool calls or tool messages.
    - Qwen2.5 Hermes (text template): chats whose contents are all strings. Its default system
      text differs from the VL one; we substitute the VL default (which ARM-Thinker uses) into
      the template, and record that we did.
    """
    messages, tools, add_gen, _ = load_chat(chat_path)
    res = {}
    uses_tools = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if not uses_tools:
        res["official_qwen25vl_text"] = render(OFFICIAL_VL.read_text(), messages, tools, add_gen)
    if all(isinstance(m["content"], str) for m in messages):
        hermes = OFFICIAL_HERMES.read_text()
        assert hermes.count(QWEN_DEFAULT_SYSTEM) == 2, "unexpected Qwen2.5 template"
        hermes = hermes.replace(QWEN_DEFAULT_SYSTEM, VL_DEFAULT_SYSTEM)
        res["official_qwen25_hermes_text"] = render(hermes, messages, tools, add_gen)
        res["hermes_default_system_substituted"] = VL_DEFAULT_SYSTEM
    return res


def smart_resize_cases() -> list:
    """transformers' smart_resize on a grid of sizes: odd multiples of 14 (Python round ties),
    tiny sides, extreme aspect ratios, and both min/max branches."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    sides = [1, 2, 13, 14, 27, 28, 29, 42, 61, 70, 97, 98, 126, 130, 150, 200, 201, 224, 250, 480, 640, 1000, 1080, 1920, 4000, 6000]
    bounds = [(3136, 12544), (3136, 200704), (3136, 12845056), (56 * 56, 28 * 28 * 1280)]
    cases = []
    for mn, mx in bounds:
        for h in sides:
            for w in sides:
                try:
                    res = list(smart_resize(h, w, factor=28, min_pixels=mn, max_pixels=mx))
                except ValueError:
                    res = None
                cases.append({"h": h, "w": w, "min_pixels": mn, "max_pixels": mx, "result": res})
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output dir (created)")
    ap.add_argument("--model-dir", type=Path, help="existing model-like dir; default: build OUT/model")
    ap.add_argument("--tokenizer-dir", type=Path, help="tokenizer files for building OUT/model")
    # max 12544 (= 112^2) makes the 150x120 fixture hit the max_pixels branch.
    ap.add_argument("--min-pixels", type=int, default=3136)
    ap.add_argument("--max-pixels", type=int, default=12544)
    ap.add_argument("chats", nargs="+", type=Path)
    args = ap.parse_args(argv)

    from safetensors.numpy import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir
    if model_dir is None:
        if args.tokenizer_dir is None:
            ap.error("give --model-dir or --tokenizer-dir")
        model_dir = make_model_dir(args.out / "model", args.tokenizer_dir, args.min_pixels, args.max_pixels)
    manifest = []
    for chat_path in args.chats:
        name = chat_path.stem
        enc = encode_chat(model_dir, chat_path)
        save_file(
            {k: enc[k] for k in ("input_ids", "pixel_values", "image_grid_thw")},
            str(args.out / f"{name}.safetensors"),
        )
        meta = {"chat": str(chat_path.resolve()), "text": enc["text"], **official_renderings(chat_path)}
        (args.out / f"{name}.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        manifest.append(name)
        print(f"{name}: {len(enc['input_ids'])} ids, {enc['pixel_values'].shape[0]} patches, "
              f"grids {enc['image_grid_thw'].tolist()}")
    (args.out / "smart_resize.json").write_text(json.dumps(smart_resize_cases()) + "\n")
    (args.out / "manifest.json").write_text(json.dumps({"model_dir": str(Path(model_dir).resolve()), "chats": manifest}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
