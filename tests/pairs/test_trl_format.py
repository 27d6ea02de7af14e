"""The exported dataset is what TRL 1.16 consumes: its data utilities and its vision preference collator.

The processor is a tiny SmolVLM (Idefics3) one built locally (byte-level BPE trained on a few words, 32 px images
-> 4 image tokens): no downloads, no model weights.
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from vlm_dpo.pairs.dataset import make_pair  # noqa: E402
from vlm_dpo.pairs.io import export_trl, import_pairs  # noqa: E402

PROMPT = "Describe the objects on the table."


@pytest.fixture(scope="module")
def processor():
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    from vlm_dpo.models import CHAT_TEMPLATE, train_tokenizer

    tok = train_tokenizer([PROMPT, "a red cup and two blue balls", "three green books"], 300)
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                             max_image_size={"longest_edge": 32})
    return Idefics3Processor(image_processor, tok, image_seq_len=4, chat_template=CHAT_TEMPLATE)


@pytest.fixture
def exported(image_root, tmp_path):
    import datasets

    root, scenes = image_root
    pairs = [
        make_pair(image_id=s.image_id, image=f"images/{s.image_id}.png", prompt=PROMPT, chosen=c, rejected=r,
                  source="mined", kind="mined", margin=1.0)
        for s, (c, r) in zip(scenes, [("a red cup.", "two red cups."), ("three green books.", "a blue ball.")])
    ]
    export_trl(pairs, root, tmp_path / "trl")
    return root, pairs, datasets.load_from_disk(str(tmp_path / "trl"))


def test_trl_data_utils_accept_an_exported_row(exported, processor):
    from trl.data_utils import is_conversational, maybe_apply_chat_template, prepare_multimodal_messages

    _, pairs, ds = exported
    row = ds[0]
    assert is_conversational(row)
    prompt = prepare_multimodal_messages(row["prompt"], images=row["images"])  # one placeholder, one image
    assert prompt[0]["content"][0]["image"] is row["images"][0]
    with pytest.raises(ValueError, match="does not match"):
        prepare_multimodal_messages(row["prompt"], images=row["images"] * 2)
    example = {"prompt": prompt, "chosen": prepare_multimodal_messages(row["chosen"]),
               "rejected": prepare_multimodal_messages(row["rejected"])}
    out = maybe_apply_chat_template(example, processor)
    assert out == {"prompt": f"User:<image>{PROMPT}<end_of_utterance>\nAssistant:",
                   "chosen": " a red cup.<end_of_utterance>\n", "rejected": " two red cups.<end_of_utterance>\n"}


def test_trl_vision_preference_collator_consumes_the_export(exported, processor):
    """TRL's DPO collator on whole rows (the trainer keeps `image` and `images` columns for vision data)."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    _, pairs, ds = exported
    batch = DataCollatorForVisionPreference(processor)([dict(ds[i]) for i in range(len(ds))])
    n = len(pairs)
    assert batch["input_ids"].shape[0] == 2 * n  # chosen rows, then rejected rows
    assert batch["pixel_values"].shape[0] == 2 * n and tuple(batch["pixel_values"].shape[-2:]) == (32, 32)
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    for i in range(2 * n):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        assert int((ids == image_id).sum()) == 4
        completion = tok.decode(batch["input_ids"][i][batch["completion_mask"][i].bool()])
        p = pairs[i % n]
        assert completion == " " + (p["chosen"] if i < n else p["rejected"]) + "<end_of_utterance>\n"
        assert PROMPT in tok.decode(ids)


def test_plain_trl_row_is_not_conversational_and_imports(image_root, tmp_path):
    import datasets
    from trl.data_utils import is_conversational

    root, scenes = image_root
    row = {"images": [f"images/{scenes[0].image_id}.png"], "prompt": PROMPT, "chosen": "a cup.", "rejected": "a ball."}
    assert not is_conversational(row)
    datasets.Dataset.from_list([row]).save_to_disk(str(tmp_path / "plain"))
    (p,) = import_pairs(tmp_path / "plain", root)
    assert (p["image"], p["prompt"], p["chosen"], p["rejected"]) == (row["images"][0], PROMPT, "a cup.", "a ball.")
