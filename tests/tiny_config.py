"""Overrides that shrink the embedded world, detector, VLM and pipeline to test sizes."""

TINY_OVERRIDES = [
    "world.n_train=24", "world.n_val=6", "world.n_test=10", "world.image_size=96",
    "detector.epochs=1", "detector.imgsz=64", "detector.batch=8",
    "vlm.spec.vision_layers=1", "vlm.spec.text_layers=1", "vlm.spec.text_width=64", "vlm.spec.text_mlp=128",
    "vlm.spec.vision_width=32", "vlm.spec.vision_heads=2", "vlm.spec.text_heads=2", "vlm.spec.text_kv_heads=1",
    "vlm.spec.vocab_size=400",
    "vlm.sft.steps=4", "vlm.sft.batch_size=4", "vlm.sft.warmup_steps=1",
    "vlm.vision_pretrain.steps=2", "vlm.vision_pretrain.batch_size=4", "vlm.vision_pretrain.eval_scenes=6",
    "describe.n_samples=2", "describe.batch_size=4", "describe.max_new_tokens=8", "eval.clip_steps=3",
    "threads=2", "describe.workers=1", "eval.workers=1", "concurrent_stages=false",
]

PIPE = ["train.max_steps=3", "train.batch_size=4", "train.eval_every=0", "train.save_every=0", "eval.n_samples=2",
        "eval.bootstrap=50", "eval.batch_size=8", "pairs.val_fraction=0.2", "variants=[no_context,mdpo]",
        "pairs.vqa_ratio=0.3",  # caption and VQA pairs in one DPO run
        "pairs.mine_answers=true", "ask.n_samples=2",  # and VQA pairs mined from the SFT VLM's sampled answers
        "rounds=2",  # a second, on-policy DPO round from the first round's model
        # the pipeline run goes through the worker processes as users' runs do
        "describe.workers=2", "eval.workers=2", "concurrent_stages=true"]
