"""Regenerate data/'s example files: three tabletop scenes drawn by the world renderer, preference pairs in
TRL's vision format about them, and annotation-app judgements about them. Run once from the repo root:

    python scripts/make_example_data.py
"""

import json
from pathlib import Path

from vlm_dpo.world.captions import reference_caption
from vlm_dpo.world.scenes import render_scene, sample_scene

DATA = Path(__file__).resolve().parents[1] / "data"
PROMPT = "Describe the objects on the table."
SCENES = (1, 2, 4)  # test-split indices of world seed 0: a few objects each, with a repeated kind in one


def main() -> None:
    (DATA / "images").mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in SCENES:
        scene = sample_scene(0, "test", i, image_size=128)
        render_scene(scene).save(DATA / "images" / f"scene_{i}.png", optimize=True)
        truth[i] = reference_caption(scene.to_dict()["objects"], scene.width)
    image = {i: f"images/scene_{i}.png" for i in SCENES}
    pairs = [  # chosen: the scene's true caption; rejected: a hallucinated object, a wrong count, vague words
        {"images": [image[1]], "prompt": PROMPT, "chosen": truth[1], "rejected": "a purple phone, a green cup, two bowls and a ball."},
        {"images": [image[1]], "prompt": PROMPT, "chosen": truth[1], "rejected": "a purple phone, a green cup and three bowls."},
        {"images": [image[2]], "prompt": PROMPT, "chosen": truth[2], "rejected": "some things on a table."},
        {"images": [image[4]], "prompt": PROMPT, "chosen": truth[4], "rejected": "a red cup, a yellow book and a bottle."},
        # conversational form, as TRL's vision datasets store it
        {"images": [image[4]],
         "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
         "chosen": [{"role": "assistant", "content": [{"type": "text", "text": truth[4]}]}],
         "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "a red cup."}]}]},
    ]
    judgement = dict(annotator="alice", prompt=PROMPT, grounding=None, edit=None, time="2026-01-01T12:00:00+00:00")
    judgements = [
        judgement | {"judgement_id": "j1", "image_id": "scene_1", "image": image[1], "a": truth[1],
                     "b": "two phones and a bowl.", "choice": "a"},
        judgement | {"judgement_id": "j2", "image_id": "scene_2", "image": image[2], "a": "a bowl and a ball.",
                     "b": truth[2], "choice": "b"},
        # both bad, with the annotator's edit: the edit beats both captions (two pairs)
        judgement | {"judgement_id": "j3", "image_id": "scene_4", "image": image[4], "a": "a red cup.",
                     "b": "a yellow book and a bottle.", "choice": "both_bad", "edit": truth[4]},
        # a tie without an edit says nothing about which is better: no pair
        judgement | {"judgement_id": "j4", "annotator": "bob", "image_id": "scene_4", "image": image[4],
                     "a": "a red cup and a book.", "b": "a book and a red cup.", "choice": "tie"},
    ]
    for name, rows in (("pairs.example.jsonl", pairs), ("judgements.example.jsonl", judgements)):
        (DATA / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
