import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from vlm_dpo.explore import _draw_image_and_boxes  # noqa: E402


def _drawn_labels(tmp_path, boxes: dict) -> list[str]:
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    fig, ax = plt.subplots()
    _draw_image_and_boxes(ax, {"image_id": "a", "image": "a.png"}, tmp_path, boxes)
    labels = [t.get_text() for t in ax.texts if t.get_text().startswith("det")]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    return labels + legend


def test_pair_images_draw_the_boxes_the_context_stated(tmp_path):
    dets = {"a": [{"label": "cup", "score": 0.35, "box": [1, 1, 9, 9]}, {"label": "ball", "score": 0.4,
                                                                         "box": [12, 12, 20, 20]}]}
    plain = _drawn_labels(tmp_path, {"detections": dets, "min_score": 0.5})
    assert plain == ["ground truth", "detector (score >= 0.5)"]
    guess = _drawn_labels(tmp_path, {"detections": dets, "min_score": 0.5, "fallback_score": 0.3})
    assert guess == ["det ball 0.40", "ground truth", "detector (score >= 0.5, or the best >= 0.3 if none)"]
