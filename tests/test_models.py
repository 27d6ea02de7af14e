import pytest
import torch

from vlm_dpo.models import ModelLoadError, TinyVLMSpec, build_tiny_idefics3, load_model_and_processor, save_model
from vlm_dpo.world import render_scene, sample_scene
from vlm_dpo.ground import render_prompt

SPEC = TinyVLMSpec(vision_width=32, vision_layers=1, vision_heads=2, text_width=64, text_layers=1, text_heads=2,
                   text_kv_heads=1, text_mlp=128, vocab_size=350)
CORPUS = ["two red cups and a blue ball.", "Describe the objects on the table. Detected: 1 ball (center).",
          "a green book on the left and a yellow phone on the right."] * 5


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, processor = build_tiny_idefics3(CORPUS, SPEC, seed=1)
    path = save_model(model, processor, tmp_path_factory.mktemp("m") / "tiny")
    return model, processor, path


def _inputs(processor, n=2):
    imgs = [render_scene(sample_scene(0, "test", i, image_size=64)) for i in range(n)]
    prompts = [render_prompt(processor, "Describe the objects on the table.")] * n
    return processor(text=prompts, images=[[im] for im in imgs], padding=True, return_tensors="pt")


def test_processor_traps_are_handled(saved):
    model, processor, _ = saved
    enc = _inputs(processor, 1)
    ids = enc["input_ids"][0].tolist()
    tok = processor.tokenizer
    assert ids.count(tok.convert_tokens_to_ids("<image>")) == SPEC.image_seq_len == 16  # no 17-crop explosion
    assert tok.convert_tokens_to_ids("<global-img>") in ids and tok.unk_token_id not in ids
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert model.config.text_config.vocab_size == len(tok)


def test_save_load_round_trip_through_from_pretrained(saved):
    model, processor, path = saved
    loaded, proc2 = load_model_and_processor(str(path))
    assert type(loaded).__name__ == "Idefics3ForConditionalGeneration"
    enc = _inputs(proc2)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, loaded(**enc).logits)
    assert proc2.tokenizer.padding_side == "left"


def test_seeded_generation_is_reproducible(saved):
    _, _, path = saved
    model, processor = load_model_and_processor(str(path))
    enc = _inputs(processor)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(model.generate(**enc, do_sample=True, max_new_tokens=6, num_return_sequences=2))
    assert torch.equal(outs[0], outs[1])


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_model_and_processor(str(tmp_path / "no-such-model"))
