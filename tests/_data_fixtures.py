"""Shared helpers for tests/test_data_*.py: a hand-written MLLMU-Bench fixture in the exact parquet schema."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE_T = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
QUESTION_T = pa.struct([("Question", pa.string()),
                        ("Options", pa.struct([(k, pa.string()) for k in "ABCD"])),
                        ("Correct_Answer", pa.string())])
TASK_T = pa.list_(pa.struct([("Question", pa.string()), ("Ground_Truth", pa.string()), ("Type", pa.string())]))
SCHEMA = pa.schema([("image", IMAGE_T), ("ID", pa.string()), ("Directory", pa.string()),
                    ("biography", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                    ("Classification_Task", pa.struct([("Image_Textual_Questions", pa.list_(QUESTION_T)),
                                                       ("Pure_Text_Questions", pa.list_(QUESTION_T))])),
                    ("Generation_Task", TASK_T), ("Mask_Task", TASK_T)])
TEST_SCHEMA = pa.schema([("images", pa.list_(IMAGE_T))] + [f for f in SCHEMA if f.name != "image"])
FT_SCHEMA = pa.schema([("image", IMAGE_T), ("ID", pa.string()), ("metadata", pa.string())])


def png(seed: int, size: int = 20) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def profile(i: int, image_col: str = "image") -> dict:
    name = f"Person {i}"
    q = lambda text, letter: {"Question": text, "Options": {"A": f"a{i}", "B": f"b{i}", "C": f"c{i}", "D": f"d{i}"},
                              "Correct_Answer": letter}
    row = {"ID": f"{i:03d}", "Directory": f"dir/{i}",
           "biography": json.dumps({"Name": name, "Birthplace": f"town{i}", "appearance_detail": "tall"}),
           "question": f"Who is {name}?", "answer": f"{name} is a fixture.",
           "Classification_Task": {"Image_Textual_Questions": [q("Where was the person in the image born?", "B")],
                                   "Pure_Text_Questions": [q(f"Where was {name} born?", "C"),
                                                           q(f"What does {name} do?", "A")]},
           "Generation_Task": [{"Question": "What is this person's job?", "Ground_Truth": f"A job {i}.",
                                "Type": "Image_Textual"},
                               {"Question": f"What is {name}'s job?", "Ground_Truth": f"A job {i}.",
                                "Type": "Pure_Text"}],
           "Mask_Task": [{"Question": "The person in the image was born in __.", "Ground_Truth": f"town{i}",
                          "Type": "Image_Textual"}]}
    if image_col == "images":
        row["images"] = [{"bytes": png(100 * i + k), "path": f"{i}_{k}.png"} for k in range(3)]
    else:
        row["image"] = {"bytes": png(i), "path": f"{i}.png"}
    return row


def write_fixture(manual_dir, config="forget_5", n=6, shards=1, rows=None, schema=None):
    """<manual_dir>/<config>/train-0000k-of-0000N.parquet in the MLLMU-Bench schema; returns the rows."""
    if rows is None:
        if config == "ft_Data":
            rows = [{"image": {"bytes": png(i), "path": f"{i}.png"}, "ID": f"{i:03d}",
                     "metadata": json.dumps([{"Question": "Who is this?", "Answer": f"Person {i}."}])}
                    for i in range(n)]
        else:
            rows = [profile(i, "images" if config == "Test_Set" else "image") for i in range(n)]
    if schema is None:
        schema = {"Test_Set": TEST_SCHEMA, "ft_Data": FT_SCHEMA}.get(config, SCHEMA)
    d = os.path.join(os.fspath(manual_dir), config)
    os.makedirs(d, exist_ok=True)
    for k, part in enumerate(np.array_split(np.arange(len(rows)), shards)):
        pq.write_table(pa.Table.from_pylist([rows[j] for j in part], schema=schema),
                       os.path.join(d, f"train-{k:05d}-of-{shards:05d}.parquet"))
    return rows
