"""Image files: opening with clear errors, paths kept under the data root, the user's folder listed."""

import pytest
from PIL import Image

from vlm_dpo.images import IMAGE_SUFFIXES, DataError, ImageError, folder_items, open_image, resolve_image


def test_open_image_names_the_bad_file(tmp_path):
    Image.new("RGBA", (8, 6), (1, 2, 3, 4)).save(tmp_path / "ok.png")
    im = open_image(tmp_path / "ok.png")
    assert im.mode == "RGB" and im.size == (8, 6)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageError, match="broken.png: not a readable image"):
        open_image(tmp_path / "broken.png")
    with pytest.raises(ImageError, match="gone.png: image file not found"):
        open_image(tmp_path / "gone.png")


def test_resolve_image_stays_under_the_root(tmp_path):
    assert resolve_image("images/a.png", tmp_path) == (tmp_path / "images/a.png").resolve()
    assert resolve_image("../x.png", tmp_path) is None
    assert resolve_image("images/../../x.png", tmp_path) is None
    assert resolve_image("/etc/passwd", tmp_path) is None
    assert resolve_image(str(tmp_path / "images/a.png"), tmp_path) == (tmp_path / "images/a.png").resolve()


def test_folder_items_lists_images_recursively_and_refuses_escapes(tmp_path):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "photos" / "b.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "photos" / "sub" / "a.JPG", format="JPEG")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    (tmp_path / "photos" / "link.png").symlink_to(tmp_path / "outside.png")
    items = folder_items(tmp_path / "photos")
    assert [it["image_id"] for it in items] == ["b", "sub/a"]
    assert items[1]["file"] == "sub/a.JPG" and items[1]["path"] == str((tmp_path / "photos" / "sub" / "a.JPG"))
    assert ".jpg" in IMAGE_SUFFIXES


def test_folder_items_bad_folders(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        folder_items(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        folder_items(tmp_path / "empty")
