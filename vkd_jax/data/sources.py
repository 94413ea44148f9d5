"""Rows for training mixes: Q/A-pair rows as examples (`pair_examples`), and views over TFDS data sources
(anything with `len()` and `[i]` returning a row dict).

- `ConcatSource([a, b, ...])`: rows of a, then b, ...; the pipeline flattens each row by the columns it has.
- `PoseJoinedSource(ft_data, profiles)`: one row per ft_Data row (one per pose of a person), carrying that pose's
  image and Q/A pairs *and* the person's benchmark tasks from `profiles` (joined by ID). Training on it shows every
  question form with every training pose, so identity -> facts is learnt pose-invariantly; rows of people absent
  from `profiles` are dropped, which is also how a split (forget_X / retain_Y) selects its people's poses.
"""

from __future__ import annotations

import bisect
import json

from vkd_jax.data.chat import plain_prompt
from vkd_jax.data.pipeline import as_str
from vkd_jax.errors import DataError


def pair_examples(rec: dict, tasks, types, cls_answer: str = "letter") -> list[dict]:
    """A row's question/answer pairs (`metadata`: MLLMU-Bench's ft_Data, an image folder's captions) -> its "ft"
    examples, LLaVA's conversation around the bare question; rows without pairs have none."""
    del cls_answer  # no multiple choice here
    out = []
    if "ft" in tasks and rec.get("metadata") is not None:
        pid = as_str(rec["ID"])
        for i, qa in enumerate(json.loads(as_str(rec["metadata"])) or []):
            typ = qa.get("Type", "Image_Textual")
            if typ in types:
                out.append({"id": pid, "task": "ft", "type": typ, "item": i, "question": qa["Question"],
                            "prompt": plain_prompt(qa["Question"], typ == "Image_Textual"), "answer": qa["Answer"],
                            "correct_letter": "", "ground_truth": qa["Answer"]})
    return out


class ConcatSource:
    def __init__(self, sources):
        self.sources = list(sources)
        self.starts = [0]
        for s in self.sources:
            self.starts.append(self.starts[-1] + len(s))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self.starts, i) - 1
        return self.sources[k][i - self.starts[k]]


class PoseJoinedSource:
    def __init__(self, ft_data, profiles, rows: list[tuple[int, int]] | None = None):
        """rows: (ft_Data row, profile row) pairs to keep (a view of this join); default every joined pair."""
        self.ft, self.profiles = ft_data, profiles
        if rows is None:
            by_id = {as_str(profiles[i]["ID"]): i for i in range(len(profiles))}
            ft_ids = [as_str(ft_data[j]["ID"]) for j in range(len(ft_data))]
            rows = [(j, by_id[i]) for j, i in enumerate(ft_ids) if i in by_id]
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        j, k = self.rows[i]
        rec = dict(self.profiles[k])
        ft = self.ft[j]
        rec["image"], rec["metadata"] = ft["image"], ft["metadata"]
        rec.pop("images", None)
        return rec

    def ids(self) -> tuple[str, ...]:
        return tuple(sorted({as_str(self.profiles[k]["ID"]) for _, k in self.rows}))

    def last_pose(self, held_out: bool) -> PoseJoinedSource:
        """The last ft_Data row of each person (`held_out`: a pose a stopping rule scores and nothing trains on;
        the embedded world writes its poses in order), or every other row."""
        last: dict[int, int] = {}
        for j, k in self.rows:
            last[k] = max(last.get(k, -1), j)
        return PoseJoinedSource(self.ft, self.profiles, [(j, k) for j, k in self.rows if (last[k] == j) == held_out])


class RowsWithIds:
    """The rows of `source` whose profile ID is (or, with `exclude`, is not) in `ids`, in source order: a forget
    split's profiles (or its retain profiles) taken from Full_Set."""

    def __init__(self, source, ids, exclude: bool = False):
        ids = set(ids)
        self.source = source
        self.rows = [i for i in range(len(source)) if (as_str(source[i]["ID"]) in ids) != exclude]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.source[self.rows[i]]


class ImageReplacedSource:
    """Every row's image (and Test_Set poses) replaced by one given encoded image: the identity-free input used to
    measure what a model answers when it cannot see who it is (the 'floor' beside chance)."""

    def __init__(self, source, image_bytes: bytes):
        self.source, self.image = source, {"bytes": image_bytes, "path": "identity_free.png"}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        rec = dict(self.source[i])
        rec["image"] = self.image
        rec.pop("images", None)
        return rec


def mean_image_bytes(source, size: int | None = None) -> bytes:
    """The pixel mean of a source's images, PNG-encoded (an image that shows nobody in particular)."""
    import io

    import numpy as np
    from PIL import Image

    acc, n = None, 0
    for i in range(len(source)):
        im = Image.open(io.BytesIO(bytes(source[i]["image"]["bytes"]))).convert("RGB")
        if size is not None:
            im = im.resize((size, size))
        a = np.asarray(im, np.float64)
        acc = a if acc is None else acc + a
        n += 1
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.round(acc / max(n, 1)), 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageFolderSource:
    """Rows from a folder of image files (sorted by name; read on access): generic, non-evaluation images, as
    ft-shaped rows with one Q/A pair, so the training pipeline batches them like any other VQA row. With a
    `captions.json` ({file name: caption}) beside them the pair is (CAPTION_QUESTION, the caption): a captioning
    stream; without, a placeholder pair, for methods that read only the image (VKD's generic-image distillation)."""

    CAPTION_QUESTION = "Describe the appearance of the person in the image."
    PLACEHOLDER = ("Who is the person in the image?", "This is someone.")

    def __init__(self, folder: str):
        from vkd_jax.io_utils import as_path

        self.folder = as_path(folder)
        if not self.folder.is_dir():
            raise DataError(None, None, None, f"generic images folder {folder!r} does not exist")
        self.files = sorted(p for p in self.folder.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
        if not self.files:
            raise DataError(None, None, None,
                            f"generic images folder {folder!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        cap = self.folder / "captions.json"
        self.captions = None
        if cap.exists():
            try:
                self.captions = {str(k): str(v) for k, v in json.loads(cap.read_text()).items()}
            except (ValueError, AttributeError) as e:
                raise DataError(str(cap), None, None, f"not a JSON object of file name -> caption ({e})") from e
            missing = [p.name for p in self.files if p.name not in self.captions]
            if missing:
                raise DataError(str(cap), None, None, f"no caption for {len(missing)} image(s), e.g. {missing[:3]}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        p = self.files[i]
        q, a = (self.CAPTION_QUESTION, self.captions[p.name]) if self.captions else self.PLACEHOLDER
        qa = json.dumps([{"Question": q, "Answer": a, "Type": "Image_Textual"}])
        return {"ID": f"generic_{i:06d}", "image": {"bytes": p.read_bytes(), "path": p.name}, "metadata": qa}
