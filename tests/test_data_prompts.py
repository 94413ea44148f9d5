"""Prompt strings equal the MLLMU-Bench templates; tokenization expands <image>; labels cover answer + EOS only;
the embedded tokenizer is an HF tokenizer (transformers' AutoTokenizer gives the same ids)."""

import numpy as np
import pytest

from vkd_jax.benchmarks.mllmu import prompts
from vkd_jax.data import chat
from vkd_jax.data.tokenizer import load_tokenizer, train_tokenizer
from vkd_jax.errors import CheckpointError

pytestmark = pytest.mark.unit

OPTS = {"A": "Paris", "B": "Rome", "C": "Oslo", "D": "Lima"}


# The six official templates (shared/spec/mllmu_bench.md, "Evaluation"), as eval.py writes them.
OFFICIAL = {
    ("classification", True): "USER: <image>\nWhere was the person in the image born?\nA: Paris\nB: Rome\nC: Oslo\n"
                              "D: Lima\nJust give ONE letter representing the answer directly.\nASSISTANT:",
    ("classification", False): "USER:\nWhere was Ann Lee born?\nA: Paris\nB: Rome\nC: Oslo\nD: Lima\n"
                               "Just give ONE letter representing the answer directly.\nASSISTANT:",
    ("cloze", True): "USER: <image>\nThe person in the image was born in [Blank].\n"
                     "Please **ONLY** provide the correct answer that should replace the [Blank].\nASSISTANT:",
    ("cloze", False): "USER:\nAnn Lee was born in [Blank].\n"
                      "Please **ONLY** provide the correct answer that should replace the [Blank].\nASSISTANT:",
    ("generation", True): "USER: <image>\nWhat is her job?\nAnswer the question based on your trained knowledge in "
                          "one sentence accurately in ENGLISH.\nASSISTANT: ",
    ("generation", False): "USER: What is Ann Lee's job?\nAnswer the question based on your trained knowledge in "
                           "one sentence in ENGLISH.\nASSISTANT:",
}


def _official_prompt(task, vqa):
    if task == "classification":
        q = "Where was the person in the image born?" if vqa else "Where was Ann Lee born?"
        return prompts.classification_prompt(q, OPTS, vqa)
    if task == "cloze":
        q = "The person in the image was born in __." if vqa else "Ann Lee was born in __."
        return prompts.cloze_prompt(q, vqa)
    return prompts.generation_prompt("What is her job?" if vqa else "What is Ann Lee's job?", vqa)


@pytest.mark.parametrize("task,vqa", sorted(OFFICIAL))
def test_official_templates_character_for_character(task, vqa):
    assert _official_prompt(task, vqa) == OFFICIAL[task, vqa]


@pytest.mark.parametrize("task,vqa", sorted(OFFICIAL))
def test_official_templates_as_token_ids(task, vqa, llama_tok_dir, hub_llava_dir):
    """With a Llama-style tokenizer, a prompt's ids are the ones the official script feeds: LlavaProcessor for VQA
    (images expanded to image_seq_length tokens), AutoTokenizer for QA; the generation-VQA prompt ends in a lone
    `▁` (its trailing space), every other in `T:`."""
    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer

    tok = load_tokenizer(llama_tok_dir)
    p = OFFICIAL[task, vqa]
    ours = chat.tokenize(tok, p, None, image_seq_length=16).input_ids
    if vqa:
        img = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
        ref = np.asarray(AutoProcessor.from_pretrained(hub_llava_dir)(images=img, text=p)["input_ids"]).ravel()
    else:
        ref = np.asarray(AutoTokenizer.from_pretrained(llama_tok_dir)(p)["input_ids"])
    np.testing.assert_array_equal(ours, ref)
    last = tok.tok.id_to_token(int(ours[-1]))
    assert last == ("▁" if (task, vqa) == ("generation", True) else "T:"), last


@pytest.mark.parametrize("prompt_of", [lambda: OFFICIAL["generation", True],
                                       lambda: chat.plain_prompt("Who is the person in the image?", True),
                                       lambda: OFFICIAL["classification", False]])
def test_training_conversation_is_the_tokenizers_own_ids(prompt_of, llama_tok_dir, hub_llava_dir):
    """A training row is the whole conversation tokenized at once (what the processor gives for it, then EOS), and
    the loss covers exactly the answer: the boundary holds where SentencePiece-style pieces meet it (the
    generation-VQA prompt's trailing space)."""
    from PIL import Image
    from transformers import AutoProcessor

    tok = load_tokenizer(llama_tok_dir)
    p, answer = prompt_of(), "The birthplace of this person is Paris."
    t = chat.tokenize(tok, p, answer, image_seq_length=16)
    img = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    proc = AutoProcessor.from_pretrained(hub_llava_dir)
    text = chat.conversation_text(p, answer)
    whole = proc(images=img, text=text) if "<image>" in p else proc.tokenizer(text)
    np.testing.assert_array_equal(t.input_ids[:-1], np.asarray(whole["input_ids"]).ravel())
    assert t.input_ids[-1] == tok.eos_id and t.loss_mask[-1]
    assert tok.decode(t.input_ids[t.loss_mask]) == answer
    assert not t.loss_mask[:t.prompt_len].any() and t.loss_mask[t.prompt_len:].all()


def test_prediction_rules():
    # official: first character of the stripped reply, A-D only
    assert prompts.classification_prediction("  b) Rome") == "B"
    assert prompts.classification_prediction("(b) Rome") == ""
    assert prompts.classification_prediction("The answer is A") == ""
    assert prompts.classification_prediction("...") == ""
    # lenient: first alphanumeric
    assert prompts.classification_prediction("  (b) Rome", "lenient") == "B"
    assert prompts.classification_prediction("...", "lenient") == ""
    assert prompts.cloze_correct("It is PARIS.", "Paris") and not prompts.cloze_correct("Rome", "Paris")


def test_official_answer_extraction():
    # the text after the first ASSISTANT:, up to a second one, stripped
    reply = prompts.official_answer("ER:\nQ?\nASSISTANT: B\nUSER: more ASSISTANT: C", "classification")
    assert reply == "B\nUSER: more"
    assert prompts.official_answer("ER: Q ASSISTANT:Paris ", "cloze") == "Paris"
    # cloze/generation fall back to "Answer:"; classification does not
    assert prompts.official_answer("no assistant here Answer: Rome", "cloze") == "Rome"
    assert prompts.official_answer("no assistant here Answer: Rome", "classification") == \
        "no assistant here Answer: Rome"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = ["Where was the person in the image born?", "Where was Ann Lee born?", "What is her job?",
             "Paris Rome Oslo Lima", "Ann Lee is a pilot.", "The person in the image was born in Paris."] * 3
    train_tokenizer(texts, d)
    return d


def test_tokenizer_files_and_special_tokens(tok_dir):
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tok_dir / f).is_file()
    tok = load_tokenizer(tok_dir)
    assert tok.tok.id_to_token(tok.bos_id) == "<s>" and tok.tok.id_to_token(tok.eos_id) == "</s>"
    assert tok.tok.id_to_token(tok.pad_id) == "<pad>" and tok.tok.id_to_token(tok.image_token_id) == "<image>"
    p = prompts.classification_prompt("Where was Ann Lee born?", OPTS, True)
    ids = tok.encode(p)
    assert ids[0] == tok.bos_id and ids.count(tok.image_token_id) == 1 and tok.eos_id not in ids
    assert tok.decode(ids) == p.replace("<image>", "")  # byte-level: exact round trip, newlines included
    assert tok.decode(ids, skip_special_tokens=False) == "<s>" + p


def test_autotokenizer_loads_the_embedded_tokenizer(tok_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    tok = load_tokenizer(tok_dir)
    p = prompts.generation_prompt("What is Ann Lee's job?", True) + " Ann Lee is a pilot."
    assert hf(p)["input_ids"] == tok.encode(p)
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert hf.convert_tokens_to_ids("<image>") == tok.image_token_id


def test_tokenize_expands_image_and_masks_answer(tok_dir):
    tok = load_tokenizer(tok_dir)
    p = chat.plain_prompt("Where was the person in the image born?", True)
    t = chat.tokenize(tok, p, "Ann Lee was born in Paris.", image_seq_length=16)
    ids = t.input_ids
    assert ids.dtype == np.int32 and (ids == tok.image_token_id).sum() == 16
    first = int(np.argmax(ids == tok.image_token_id))
    assert (ids[first:first + 16] == tok.image_token_id).all()  # one contiguous run
    assert ids[-1] == tok.eos_id and t.loss_mask[-1] and not t.loss_mask[:t.prompt_len].any()
    assert t.loss_mask[t.prompt_len:].all() and t.prompt_len == len(tok.encode(p)) + 15
    assert tok.decode(ids[t.loss_mask]).strip() == "Ann Lee was born in Paris."
    # eval prompt: no answer, no EOS, no loss
    e = chat.tokenize(tok, p, None, image_seq_length=16)
    assert not e.loss_mask.any() and e.input_ids[-1] != tok.eos_id and (e.input_ids == ids[:len(e.input_ids)]).all()


def test_text_prompt_has_no_image_tokens(tok_dir):
    tok = load_tokenizer(tok_dir)
    t = chat.tokenize(tok, chat.plain_prompt("Where was Ann Lee born?", False), "In Paris.", 576)
    assert (t.input_ids != tok.image_token_id).all()


def test_load_tokenizer_errors(tmp_path, tok_dir):
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="<im_patch>"):
        load_tokenizer(tok_dir, image_token="<im_patch>")


def test_llava_style_folder_is_read_with_tokenizers_only(tmp_path):
    """A Llama/LLaVA-like tokenizer.json (Metaspace BPE, `<image>` added, special tokens given as AddedToken dicts
    in tokenizer_config.json, pad token `<pad>`) is read without transformers."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    tk.train_from_iterator(["USER: Where was Ann Lee born?\nASSISTANT: In Paris."] * 5,
                           trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                               show_progress=False))
    tk.add_special_tokens(["<image>", "<pad>"])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tk.save(str(tmp_path / "tokenizer.json"))
    tok_cfg = {k: {"content": v, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
               for k, v in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "pad_token": "<pad>"}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0) and tok.pad_id == tk.token_to_id("<pad>")
    p = chat.plain_prompt("Where was Ann Lee born?", True)
    t = chat.tokenize(tok, p, "In Paris.", image_seq_length=576)
    assert (t.input_ids == tok.image_token_id).sum() == 576 and t.input_ids[0] == 1 and t.input_ids[-1] == 2
    assert tok.decode(t.input_ids[t.loss_mask]).strip() == "In Paris."
