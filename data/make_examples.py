"""Writes the small example rows in data/ (run from the repository root with the test Python:
~/.cache/armt/venv/bin/python data/make_examples.py). Every format armt reads from ARM-Thinker:
verl RL parquet, LLaMA-Factory SFT conversations, ARMBench-VL items; images are tiny PNGs."""
import json, os, io
import pyarrow as pa, pyarrow.parquet as pq
from PIL import Image, ImageDraw

D = os.path.dirname(os.path.abspath(__file__))
os.makedirs(f"{D}/images", exist_ok=True)
os.makedirs(f"{D}/pages", exist_ok=True)

def scene(name, dot):
    im = Image.new("RGB", (96, 64), (235, 235, 235))
    ImageDraw.Draw(im).ellipse((70, 8, 76, 14), fill=dot)
    im.save(f"{D}/images/{name}.png")
    return f"images/{name}.png"

red = scene("red_dot", (220, 20, 20))
blue = scene("blue_dot", (20, 20, 220))
texts = ["Annual report 2023. Contents.", "Revenue grew 12 percent to 4.1 million.", "Staff count rose to 87."]
for p, t in enumerate(texts, 1):
    im = Image.new("RGB", (48, 64), (255, 255, 255))
    ImageDraw.Draw(im).text((2, 2), str(p), fill=(0, 0, 0))
    im.save(f"{D}/pages/report_{p}.png")
    open(f"{D}/pages/report_{p}.txt", "w").write(t)
grid = Image.new("RGB", (150, 64), (255, 255, 255))
for p in range(3):
    grid.paste(Image.open(f"{D}/pages/report_{p + 1}.png"), (p * 50, 0))
grid.save(f"{D}/images/report_grid.png")

def png_bytes(path):
    return open(f"{D}/{path}", "rb").read()

pair_q = "<image>\nWhat colour is the small dot in the top-right corner?"
rows = [
    dict(data_source="deepeyes_crop",
         prompt=[dict(role="user", content=pair_q + "\n[Answer 1] It is red.\n[Answer 2] It is blue.\nWhich answer is better?")],
         images=[dict(bytes=png_bytes(red), path=None)],
         reward_model=dict(ground_truth="1", style="rule"),
         extra_info=dict(index=0, rm_tag="pair_rm", doc_id=None, response=None),
         agent_name="tool_agent"),
    dict(data_source="llava_critic",
         prompt=[dict(role="user", content=pair_q + "\n[Answer 1] It is red.\n[Answer 2] It is blue.\nWhich answer is better?")],
         images=[dict(bytes=None, path=blue)],
         reward_model=dict(ground_truth="2", style="rule"),
         extra_info=dict(index=1, rm_tag="pair_rm", doc_id=None, response=None),
         agent_name="tool_agent"),
    dict(data_source="mp_docvqa",
         prompt=[dict(role="user", content="<image>\nQuestion: By how much did revenue grow?\nResponse: 12 percent.\nIs the response correct?")],
         images=[dict(bytes=None, path="images/report_grid.png")],
         reward_model=dict(ground_truth="-1", style="rule"),
         extra_info=dict(index=2, rm_tag="single_rm", doc_id="report.pdf", response=None),
         agent_name="tool_agent"),
    dict(data_source="mmif_train",
         prompt=[dict(role="user", content="<image>\nInstruction: describe the image in exactly two paragraphs.\nDoes `text_0` follow it?")],
         images=[dict(bytes=None, path=red)],
         reward_model=dict(ground_truth="False", style="rule"),
         extra_info=dict(index=3, rm_tag="single_rm", doc_id=None, response="A grey image with a small red dot."),
         agent_name="tool_agent"),
]
pq.write_table(pa.Table.from_pylist(rows), f"{D}/rl_train.parquet")

call = '<think>The dot is tiny; zoom in.</think>\n<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"image": "original_image", "bbox_2d": [650, 50, 850, 300]}}\n</tool_call>'
sft = [
    dict(messages=[
        dict(role="user", content="<image>What colour is the small dot in the top-right corner?\n[Answer 1] It is red.\n[Answer 2] It is blue.\nWhich answer is better?"),
        dict(role="assistant", content=call),
        dict(role="user", content="<tool_response>\n<image>This is the zoom-in image `observation_1`(zoomed in on the image original_image) after your tool call.\n</tool_response>"),
        dict(role="assistant", content="<think>The zoomed dot is red.</think><answer>Overall Judgment: Answer 1 is better (X must be either 1 or 2). </answer>"),
    ], images=[red, red]),
    dict(conversations=[
        dict(**{"from": "human", "value": "<image>Is the response `It is blue.` correct for the dot's colour?"}),
        dict(**{"from": "gpt", "value": "<think>The dot looks blue.</think><answer>Overall Judgment: True</answer>"}),
    ], images=[blue]),
]
with open(f"{D}/sft_llamafactory.jsonl", "w") as f:
    for r in sft:
        f.write(json.dumps(r) + "\n")

os.makedirs(f"{D}/armbench", exist_ok=True)
fg = [
    dict(idx=0, rm_tag="pair_rm", question="<image>\nWhat colour is the small dot in the top-right corner?",
         preds=["It is red.", "It is blue."], images=[red], gt=1),
    dict(idx=1, rm_tag="single_rm", question="What colour is the small dot?", preds=["It is blue."], images=[blue], gt="True"),
    dict(idx=2, rm_tag="4-way-pair_rm", question="What colour is the dot?",
         preds=["green", "blue", "red", "black"], images=[red], gt=3),
]
doc = [dict(idx=0, rm_tag="single_rm", question="By how much did revenue grow?", preds=["12 percent."],
            images=["images/report_grid.png"], gt="True", doc_id="report.pdf")]
mmif = [dict(idx=0, rm_tag="single_rm", question="Describe the image in exactly two paragraphs.",
             preds=["A grey image with a small red dot."], images=[red], gt="False",
             constraints=[dict(key="paragraphs", value="The response must have exactly two paragraphs.")])]
for name, items in [("fine_grained_perception", fg), ("multimodal_long_document", doc),
                    ("multimodal_instruction_following", mmif)]:
    with open(f"{D}/armbench/{name}.jsonl", "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
