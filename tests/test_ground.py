from vlm_dpo.ground import (GroundingConfig, PromptConfig, context_detections, grounding_text, plural, prompt_text,
                            render_prompt)

DETS = [
    {"label": "cup", "score": 0.9, "box": [80, 5, 95, 20]},  # top right
    {"label": "ball", "score": 0.8, "box": [40, 40, 50, 50]},  # center
    {"label": "cup", "score": 0.7, "box": [0, 0, 10, 10]},  # top left
    {"label": "book", "score": 0.1, "box": [0, 80, 10, 90]},  # below the confidence filter
]


def test_grounding_counts_positions_filter_and_order():
    assert grounding_text(DETS, 90, 90) == "Detected: 2 cups (top left, top right), 1 ball (center)."
    # order does not depend on the detector's output order
    assert grounding_text(DETS[::-1], 90, 90) == grounding_text(DETS, 90, 90)
    cfg = GroundingConfig(min_score=0.05, positions=False)
    assert grounding_text(DETS, 90, 90, cfg) == "Detected: 1 book, 2 cups, 1 ball."


def test_grounding_boxes_and_empty():
    cfg = GroundingConfig(positions=False, boxes=True)
    assert grounding_text(DETS[1:2], 100, 100, cfg) == "Detected: 1 ball ([40,40,50,50])."
    assert grounding_text([], 90, 90) == "Detected: nothing."
    assert grounding_text(DETS[3:], 90, 90) == "Detected: nothing."


def test_fallback_lists_the_best_guess_only_when_nothing_clears_the_threshold():
    guesses = [{"label": "cup", "score": 0.35, "box": [0, 0, 10, 10]},
               {"label": "ball", "score": 0.45, "box": [40, 40, 50, 50]},
               {"label": "book", "score": 0.2, "box": [0, 80, 10, 90]}]
    cfg = GroundingConfig(min_score=0.5, positions=False, fallback_score=0.3)
    # nothing reaches 0.5: the one best detection at or above 0.3, not every one
    assert context_detections(guesses, cfg) == [guesses[1]]
    assert grounding_text(guesses, 90, 90, cfg) == "Detected: 1 ball."
    # one confident detection: the guesses below the threshold stay out
    confident = guesses + [{"label": "apple", "score": 0.9, "box": [80, 5, 95, 20]}]
    assert grounding_text(confident, 90, 90, cfg) == "Detected: 1 apple."
    # nothing at or above the fallback either, or no fallback set: the empty context as before
    assert grounding_text(guesses[2:], 90, 90, cfg) == "Detected: nothing."
    assert grounding_text(guesses, 90, 90, GroundingConfig(min_score=0.5)) == "Detected: nothing."


def test_plural():
    assert [plural(w) for w in ("cup", "glass", "person", "strawberry", "toy")] == [
        "cups", "glasses", "people", "strawberries", "toys"]


def test_prompt_with_and_without_grounding():
    g = "Detected: 1 ball (center)."
    assert prompt_text(g) == "Describe the objects on the table. Detected: 1 ball (center)."
    assert prompt_text(g, PromptConfig(grounded=False)) == "Describe the objects on the table."


def test_prompt_rendered_by_model_chat_template():
    from vlm_dpo.models import build_tiny_idefics3, TinyVLMSpec

    _, processor = build_tiny_idefics3(["a red cup.", "Describe the objects."], TinyVLMSpec(vocab_size=300))
    text = render_prompt(processor, "Describe the objects.")
    assert text == "User:<image>Describe the objects.<end_of_utterance>\nAssistant:"
