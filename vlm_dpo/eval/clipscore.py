"""CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning"):

    CLIPScore(image, caption) = w * max(cos(E_img(image), E_txt(caption)), 0),   w = 2.5

through open_clip, so real users pass any open_clip model (`ViT-B-32` with `pretrained="openai"` from their
cache, `hf-hub:...`, `local-dir:...`). The embedded world has no downloadable CLIP, so `train_tiny_clip`
trains a small one here on world images and their reference captions with open_clip's own model classes and
contrastive loss, saves it in open_clip's `local-dir` layout, and it loads back like any other.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}


@dataclass
class ClipTrainConfig:
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


def load_clip(name: str, pretrained: str | None = None, device: str = "cpu"):
    """(model, preprocess, tokenizer) of any open_clip model; offline, so names must be cached or local."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


@torch.no_grad()
def clip_scores(model, preprocess, tokenizer, images: list, captions: list[str], w: float = 2.5,
                batch_size: int = 64) -> list[float]:
    """CLIPScore of each (image, caption) pair."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(images), batch_size):
        ims = torch.stack([preprocess(im) for im in images[s:s + batch_size]]).to(device)
        txt = tokenizer(captions[s:s + batch_size]).to(device)
        a = F.normalize(model.encode_image(ims), dim=-1)
        b = F.normalize(model.encode_text(txt), dim=-1)
        out += (w * (a * b).sum(-1).clamp(min=0)).tolist()
    return out


@torch.no_grad()
def retrieval_accuracy(model, preprocess, tokenizer, images: list, captions: list[str]) -> float:
    """Image->text top-1 accuracy among the given captions (chance = 1/len)."""
    ims = torch.stack([preprocess(im) for im in images])
    a = F.normalize(model.encode_image(ims), dim=-1)
    b = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    return float(((a @ b.T).argmax(1) == torch.arange(len(images))).float().mean())


def train_tiny_clip(world_root: Path, out_dir: Path, cfg: ClipTrainConfig, world_seed: int = 0,
                    image_size: int = 128, progress: bool = True) -> dict:
    """Contrastive training of a tiny open_clip model on world scenes; cached in open_clip's local-dir format."""
    import open_clip
    from open_clip.loss import ClipLoss
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from ..world.captions import reference_caption
    from ..world.export import load_annotations
    from ..world.scenes import render_scene, sample_scene

    out_dir = Path(out_dir)
    meta_path = out_dir / "metrics.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    torch.manual_seed(cfg.seed)
    model = open_clip.model.CLIP(**TINY_CLIP)
    preprocess = open_clip.image_transform(TINY_CLIP["vision_cfg"]["image_size"], is_train=False)
    # the BPE vocabulary bundled with open_clip: nothing is downloaded
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=TINY_CLIP["text_cfg"]["context_length"])
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    model.train()
    t0 = time.time()
    losses = []
    for step in tqdm(range(cfg.steps), desc="clip", disable=not progress):
        scenes = [sample_scene(world_seed, "sft", 20_000_000 + step * cfg.batch_size + j, image_size=image_size)
                  for j in range(cfg.batch_size)]
        ims = torch.stack([preprocess(render_scene(s)) for s in scenes])
        txt = tokenizer([reference_caption(s.to_dict()["objects"], image_size) for s in scenes])
        img_f, txt_f, scale = model(ims, txt)
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    val = load_annotations(world_root, "val")[:64]
    from PIL import Image

    images = [Image.open(v["path"]).convert("RGB") for v in val]
    caps = [reference_caption(v["objects"], v["width"]) for v in val]
    acc = retrieval_accuracy(model, preprocess, tokenizer, images, caps)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out_dir / "open_clip_model.safetensors"))
    (out_dir / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP, "preprocess_cfg": {"size": TINY_CLIP["vision_cfg"]["image_size"]}}))
    meta = {"model": f"local-dir:{out_dir}", "loss_first": sum(losses[:10]) / 10, "loss_last": sum(losses[-10:]) / 10,
            "val_retrieval_top1": acc, "val_chance": 1 / len(val), "minutes": round((time.time() - t0) / 60, 2),
            "config": asdict(cfg)}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta
