"""The DPO training loop on accelerate: one CPU, one GPU, or many through `accelerate launch`.

Written here rather than on TRL's Trainer because the forward pass is ours (one vision pass per pair, LM head
at completion positions only, precomputed references); TRL is the correctness oracle in the tests.

Data order is a pure function of (seed, step): optimizer step s consumes global micro-batches
s*grad_accum ... s*grad_accum + grad_accum - 1 of a per-epoch permutation, and each process takes its slice of
every global micro-batch. So resuming from a checkpoint at step s replays exactly the batches an
uninterrupted run would, and N processes see the same global batches as one.

Output folder (`output_dir`):
    metrics.jsonl                one line per logged step (train) and per evaluation (eval/...)
    checkpoints/step-<N>/        accelerate state (model safetensors, optimizer, scheduler, RNG) + trainer.json
    reference/ref-*.safetensors  precomputed reference log-probs (reference=precomputed)
    model/                       final model (save_pretrained; LoRA merged when lora.merge_on_save), processor
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..detect import open_image
from ..pairs.dataset import load_pairs, resolve_image
from ..records import read_jsonl, write_text_atomic
from .collate import ExampleTooLongError
from .losses import REFERENCE_FREE, LossConfig, PreferenceLogps, RewardShift, preference_loss
from .reference import REFERENCE_KINDS, ReferenceCache, frozen_copy, model_fingerprint, no_grad_ctx


@dataclass
class LossSettings:
    """The loss choice: `weights` names losses from losses.LOSSES (or `mixture` names a MIXTURES entry).

    Empty weights mean {"sigmoid": 1.0}; the default is empty so that a YAML file's weights replace it
    rather than merge into it."""
    weights: dict[str, float] = field(default_factory=dict)
    mixture: str = ""
    beta: float = 0.1
    label_smoothing: float = 0.0
    ipo_tau: float | None = None
    simpo_gamma: float = 0.5
    length_alpha: float = 0.0
    sft_mean: bool = True
    anchor_delta: float = 0.0
    corruption: str = "mask_boxes"  # mDPO's corrupted image: mask_boxes | crop

    def loss_config(self) -> LossConfig:
        return LossConfig(beta=self.beta, label_smoothing=self.label_smoothing, ipo_tau=self.ipo_tau,
                          simpo_gamma=self.simpo_gamma, length_alpha=self.length_alpha, sft_mean=self.sft_mean,
                          anchor_delta=self.anchor_delta,
                          weights=self.mixture or dict(self.weights) or {"sigmoid": 1.0})


@dataclass
class LoRASettings:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge_on_save: bool = True


@dataclass
class TrainConfig:
    model: str = ""  # HF id/path of the policy; empty = the pipeline's SFT model
    pairs: str = ""  # pair file (parquet/jsonl); empty = <out>/pairs/pairs.parquet
    image_root: str = ""  # root that relative image paths resolve against (and may not escape)
    output_dir: str = ""  # empty = <out>/dpo
    reference: str = "precomputed"  # frozen | lora_disabled | precomputed | none
    loss: LossSettings = field(default_factory=LossSettings)
    lora: LoRASettings = field(default_factory=LoRASettings)
    freeze_vision: bool = False
    freeze_projector: bool = False
    lr: float = 1e-4
    lr_vision: float = 0.0  # 0 = same as lr
    lr_projector: float = 0.0  # 0 = same as lr
    weight_decay: float = 0.0
    batch_size: int = 16  # pairs per process per micro-step
    grad_accum: int = 1
    max_steps: int = 100
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16 (where the device supports it)
    gradient_checkpointing: bool = False
    shared_vision: bool = True  # one vision-encoder pass per pair
    shared_prefix: bool = True  # image + prompt once per pair, both completions after it (supported families)
    max_length: int = 0  # 0 = no limit; prompts (image tokens included) are never truncated
    dtype: str = "float32"
    eval_every: int = 50
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    trackers: list[str] = field(default_factory=list)  # e.g. [tensorboard], [wandb]
    resume: bool = True


# ----------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------


def corrupt_image(img, boxes, mode: str, rng: random.Random):
    """mDPO's corrupted image: the detected objects masked out (default), or a small random resized crop."""
    from PIL import ImageDraw

    img = img.copy()
    if mode == "mask_boxes" and boxes:
        import numpy as np

        fill = tuple(int(c) for c in np.median(np.asarray(img.resize((8, 8))).reshape(-1, 3), axis=0))
        d = ImageDraw.Draw(img)
        for b in boxes:
            d.rectangle([b[0], b[1], b[2], b[3]], fill=fill)
        return img
    w, h = img.size  # crop: keep 10-20% of the area, as mDPO's "little information" crop
    area = rng.uniform(0.1, 0.2)
    cw, ch = max(1, int(w * math.sqrt(area))), max(1, int(h * math.sqrt(area)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch)).resize((w, h))


@dataclass
class TrainBatch:
    pair_ids: list[str]
    encoded: object  # logps.PairBatch: chosen rows then rejected rows, image tensors once per pair
    corrupt: object | None  # collate.encode output of chosen under corrupted images (mDPO)
    n_tokens: int


def make_batch(rows: list[dict], processor, cfg: TrainConfig, model_type: str, image_root: Path, step: int,
               need_corrupt: bool) -> TrainBatch:
    from .collate import encode
    from .logps import encode_pairs

    images = []
    for r in rows:
        path = resolve_image(r["image"], image_root)
        if path is None:
            raise ValueError(f"pair {r['pair_id']}: image {r['image']!r} escapes the data root {image_root}")
        try:
            images.append(open_image(path))
        except ValueError as e:
            raise ValueError(f"pair {r['pair_id']}: {e}") from None
    names = [f"pair {r['pair_id']}" for r in rows]
    try:
        enc = encode_pairs(processor, images, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                           [r["rejected"] for r in rows], max_length=cfg.max_length, names=names,
                           model_type=model_type)
    except ExampleTooLongError:
        raise
    except Exception as e:  # the processor rejected an image or text: name the pairs
        raise ValueError(f"{', '.join(names)}: the processor rejected this batch ({e})") from e
    corrupt = None
    if need_corrupt:
        rng = random.Random(f"corrupt/{cfg.seed}/{step}")
        bad = [corrupt_image(im, r.get("boxes") or [], cfg.loss.corruption, rng) for im, r in zip(images, rows)]
        corrupt = encode(processor, bad, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                         max_length=cfg.max_length, names=names, model_type=model_type)
    n_tokens = int(enc.inputs["attention_mask"].sum())
    return TrainBatch([r["pair_id"] for r in rows], enc, corrupt, n_tokens)


def _to(batch: "TrainBatch", device) -> "TrainBatch":
    if batch.corrupt is not None:
        batch.corrupt.inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.corrupt.inputs.items()}
        batch.corrupt.labels = batch.corrupt.labels.to(device)
    batch.encoded = batch.encoded.to(device)
    return batch


def batch_logps(model, batch: TrainBatch, shared_vision: bool, shared_prefix: bool = True):
    """Policy (or reference) log-probs of one batch: (chosen, rejected, chosen_under_corrupt or None)."""
    from .logps import completion_logps, pair_logps

    chosen, rejected = pair_logps(model, batch.encoded, shared_vision=shared_vision, shared_prefix=shared_prefix)
    corrupt = None
    if batch.corrupt is not None:
        corrupt = completion_logps(model, batch.corrupt.inputs, batch.corrupt.labels)
    return chosen, rejected, corrupt


# ----------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------


class DataOrder:
    """Which pairs each process gets at each micro-step; a pure function of seed and step."""

    def __init__(self, n: int, batch_size: int, num_processes: int, rank: int, seed: int):
        self.n, self.bs, self.world, self.rank, self.seed = n, batch_size, num_processes, rank, seed
        self.global_bs = batch_size * num_processes
        if n < self.global_bs:
            raise ValueError(f"only {n} training pairs for a global batch of {self.global_bs}; lower batch_size")
        self.per_epoch = n // self.global_bs  # drop the ragged tail: every global batch has the same size

    def global_indices(self, micro_step: int) -> list[int]:
        """All processes' pairs of one micro-step."""
        epoch, pos = divmod(micro_step, self.per_epoch)
        perm = list(range(self.n))
        random.Random(f"order/{self.seed}/{epoch}").shuffle(perm)
        return perm[pos * self.global_bs:(pos + 1) * self.global_bs]

    def indices(self, micro_step: int) -> list[int]:
        """This process's slice of one micro-step."""
        return self.global_indices(micro_step)[self.rank * self.bs:(self.rank + 1) * self.bs]

    def used(self, micro_steps: int) -> list[int]:
        """Every pair index the first `micro_steps` micro-steps touch (sorted, distinct)."""
        return sorted({i for m in range(micro_steps) for i in self.global_indices(m)})


def _param_groups(model, cfg: TrainConfig):
    vision, projector, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "vision" in name or "visual" in name:
            vision.append(p)
        elif "connector" in name or "projector" in name or "merger" in name:
            projector.append(p)
        else:
            rest.append(p)
    groups = [{"params": rest, "lr": cfg.lr}]
    if vision:
        groups.append({"params": vision, "lr": cfg.lr_vision or cfg.lr})
    if projector:
        groups.append({"params": projector, "lr": cfg.lr_projector or cfg.lr})
    return [g for g in groups if g["params"]]


def _average_ddp_grads(model, bucket_numel: int = 1 << 24) -> None:
    """Average gradients over the processes of a DDP-wrapped model (a no-op for an unwrapped one).

    Our forward (logps.pair_logps / completion_logps) calls the wrapped model's base and head directly, not
    DDP's forward, so DDP's reducer is never armed and would leave each process with its own local gradients.
    A parameter with a gradient on any process takes part on all (a missing one counts as zeros), so every
    process issues the same collectives; one with no gradient anywhere keeps grad None, as in a single process.
    Idempotent: averaging gradients DDP had already averaged leaves them unchanged."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return
    import torch.distributed as dist

    world = dist.get_world_size()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    has = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    params = [p for p, h in zip(params, has.tolist()) if h > 0]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    start = 0
    while start < len(params):
        bucket, n = [], 0
        while start < len(params) and (not bucket or n + params[start].numel() <= bucket_numel):
            bucket.append(params[start])
            n += params[start].numel()
            start += 1
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat)
        flat /= world
        for p, g in zip(bucket, flat.split([p.numel() for p in bucket])):
            p.grad.copy_(g.view_as(p.grad))


def _freeze(model, cfg: TrainConfig) -> None:
    for name, p in model.named_parameters():
        if cfg.freeze_vision and ("vision" in name or "visual" in name) and "merger" not in name:
            p.requires_grad_(False)
        if cfg.freeze_projector and ("connector" in name or "projector" in name or "merger" in name):
            p.requires_grad_(False)


def _lr_lambda(cfg: TrainConfig):
    def f(step):
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return 1.0 - t if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * t))
    return f


def needs_reference(cfg: TrainConfig) -> bool:
    return any(n not in REFERENCE_FREE for n in cfg.loss.loss_config().weights)


def needs_corrupt(cfg: TrainConfig) -> bool:
    return any(n.startswith("mdpo") for n in cfg.loss.loss_config().weights)


def precompute_reference(model, processor, pairs: list[dict], cfg: TrainConfig, image_root: Path, cache_dir: Path,
                         progress: bool = True) -> ReferenceCache:
    """Reference log-probs of every pair under `model` (the initial policy), cached on disk."""
    corrupt = needs_corrupt(cfg)
    fp = model_fingerprint(model)
    ids = [p["pair_id"] for p in pairs]
    path = ReferenceCache.path_for(cache_dir, fp, ids, corrupt)
    if path.exists():
        return ReferenceCache.load(path)
    model_type = getattr(model.config, "model_type", "")
    out = {"chosen": [], "rejected": []} | ({"chosen_corrupt": []} if corrupt else {})
    bs = cfg.batch_size
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(pairs), bs), desc="reference", disable=not progress):
            rows = pairs[start:start + bs]
            # the corruption RNG is keyed by pair position so the cached value matches any later batch order
            batch = make_batch(rows, processor, cfg, model_type, image_root, step=-1 - start, need_corrupt=corrupt)
            c, r, cc = batch_logps(model, _to(batch, model.device), cfg.shared_vision, cfg.shared_prefix)
            out["chosen"].append(c.sum.float().cpu())
            out["rejected"].append(r.sum.float().cpu())
            if corrupt:
                out["chosen_corrupt"].append(cc.sum.float().cpu())
    model.train(was_training)
    cache = ReferenceCache({k: torch.cat(v) for k, v in out.items()}, ids)
    cache.save(path, fp, ids)
    return cache


def _list_checkpoints(out: Path) -> list[Path]:
    ck = out / "checkpoints"
    return sorted(ck.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if ck.exists() else []


def train_dpo(cfg: TrainConfig, *, progress: bool = True, processor_loader=None) -> dict:
    """Train the policy on the pairs; returns a summary (final metrics, paths). See the module docstring."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from ..models import load_model_and_processor

    if cfg.reference not in REFERENCE_KINDS:
        raise ValueError(f"train.reference must be one of {REFERENCE_KINDS}, got {cfg.reference!r}")
    loss_cfg = cfg.loss.loss_config()
    use_ref = needs_reference(cfg)
    if use_ref and cfg.reference == "none":
        raise ValueError(f"losses {list(loss_cfg.weights)} need a reference; set train.reference")
    if cfg.reference == "lora_disabled" and not cfg.lora.enabled:
        raise ValueError("train.reference=lora_disabled needs train.lora.enabled=true")
    out = Path(cfg.output_dir)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                              log_with=cfg.trackers or None, project_dir=str(out))
    set_seed(cfg.seed)
    image_root = Path(cfg.image_root or ".").resolve()
    pairs = load_pairs(cfg.pairs)
    train_pairs = [p for p in pairs if p.get("split", "train") == "train"]
    val_pairs = [p for p in pairs if p.get("split") == "val"]
    if not train_pairs:
        raise ValueError(f"{cfg.pairs}: no pairs with split 'train'")

    model, processor = load_model_and_processor(cfg.model, dtype=cfg.dtype, device="cpu")
    model_type = getattr(model.config, "model_type", "")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                 lora_dropout=cfg.lora.dropout,
                                                 target_modules=list(cfg.lora.target_modules)))
    _freeze(model, cfg)
    model.to(accelerator.device)

    order = DataOrder(len(train_pairs), cfg.batch_size, accelerator.num_processes, accelerator.process_index,
                      cfg.seed)
    ref_model, ref_cache = None, None
    if use_ref and cfg.reference == "frozen" and accelerator.distributed_type.value in ("DEEPSPEED", "FSDP"):
        raise ValueError("a frozen reference copy is not sharded under FSDP/DeepSpeed: use train.reference="
                         "precomputed (or lora_disabled with LoRA)")
    if use_ref and cfg.reference == "frozen":
        ref_model = frozen_copy(model)
    elif use_ref and cfg.reference == "precomputed":
        # Only the pairs this run will visit (a short run on a big pair set sees a fraction of it).
        used = [train_pairs[i] for i in order.used(cfg.max_steps * cfg.grad_accum)]
        with accelerator.main_process_first():  # main computes and saves; the others then load the file
            ref_cache = precompute_reference(model, processor, used + val_pairs, cfg, image_root,
                                             out / "reference", progress=progress and accelerator.is_main_process)

    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    # The scheduler stays unprepared: accelerate would step it once per process (it assumes a sharded
    # dataloader), while our steps are global optimizer steps. Registered so checkpoints carry it.
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    reward_shift = RewardShift()
    need_c = needs_corrupt(cfg)

    start = 0
    if cfg.resume and _list_checkpoints(out):
        last = _list_checkpoints(out)[-1]
        accelerator.load_state(str(last))
        state = json.loads((last / "trainer.json").read_text())
        start = state["step"]
        reward_shift.load_state_dict(state["reward_shift"])
    if cfg.trackers:
        accelerator.init_trackers("vlm_dpo", config={"lr": cfg.lr, "beta": cfg.loss.beta,
                                                      "batch_size": cfg.batch_size, "reference": cfg.reference})

    def logps_of(batch: TrainBatch, policy_model) -> PreferenceLogps:
        c, r, cc = batch_logps(policy_model, batch, cfg.shared_vision, cfg.shared_prefix)
        refs = {}
        if use_ref:
            if ref_cache is not None:
                got = ref_cache.lookup(batch.pair_ids, c.sum.device)
                refs = {"ref_chosen": got["chosen"], "ref_rejected": got["rejected"],
                        "ref_chosen_corrupt": got.get("chosen_corrupt")}
            else:
                with torch.no_grad(), no_grad_ctx(cfg.reference, accelerator.unwrap_model(model)):
                    rc, rr, rcc = batch_logps(ref_model if ref_model is not None else policy_model, batch,
                                              cfg.shared_vision, cfg.shared_prefix)
                refs = {"ref_chosen": rc.sum.detach(), "ref_rejected": rr.sum.detach(),
                        "ref_chosen_corrupt": rcc.sum.detach() if rcc is not None else None}
        return PreferenceLogps(
            policy_chosen=c.sum, policy_rejected=r.sum, chosen_tokens=c.n_tokens.float(),
            rejected_tokens=r.n_tokens.float(), policy_chosen_corrupt=cc.sum if cc is not None else None, **refs)

    def save_checkpoint(step: int, name: str | None = None) -> Path:
        path = out / "checkpoints" / (name or f"step-{step}")
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path), safe_serialization=True)
        if accelerator.is_main_process:
            write_text_atomic(path / "trainer.json", json.dumps({"step": step, "reward_shift": reward_shift.state_dict()}))
            for old in _list_checkpoints(out)[:-cfg.keep_checkpoints] if name is None else []:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def evaluate(step: int) -> dict:
        if not val_pairs:
            return {}
        model.eval()
        sums, n = {}, 0
        with torch.no_grad():
            for s in range(0, len(val_pairs), cfg.batch_size):
                rows = val_pairs[s:s + cfg.batch_size]
                b = _to(make_batch(rows, processor, cfg, model_type, image_root, -10**6 - s, need_c), accelerator.device)
                _, m = preference_loss(logps_of(b, model), loss_cfg)
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(rows)
                n += len(rows)
        model.train()
        return {f"eval/{k}": v / n for k, v in sums.items()} | {"step": step}

    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if metrics_path.exists():
            # keep only what the checkpoint we resume from had seen: the replayed steps are logged again
            from ..records import write_jsonl_atomic

            kept = [r for r in read_jsonl(metrics_path, allow_torn_tail=True) if r["step"] <= start]
            write_jsonl_atomic(metrics_path, kept)
    log_f = metrics_path.open("a") if accelerator.is_main_process else None

    def log(rec: dict) -> None:
        if log_f:
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
        if cfg.trackers:
            accelerator.log({k: v for k, v in rec.items() if k != "step"}, step=rec["step"])

    model.train()
    bar = tqdm(range(start, cfg.max_steps), desc="dpo", disable=not (progress and accelerator.is_main_process),
               initial=start, total=cfg.max_steps)
    last = {}
    for step in bar:
        t0 = time.time()
        agg, tokens = {}, 0
        for micro in range(cfg.grad_accum):
            idx = order.indices(step * cfg.grad_accum + micro)
            rows = [train_pairs[i] for i in idx]
            batch = _to(make_batch(rows, processor, cfg, model_type, image_root, step * cfg.grad_accum + micro,
                                   need_c), accelerator.device)
            tokens += batch.n_tokens
            with accelerator.accumulate(model):
                loss, m = preference_loss(logps_of(batch, model), loss_cfg, reward_shift)
                if not torch.isfinite(loss):
                    ck = save_checkpoint(step, name=f"nan-step-{step}")
                    raise FloatingPointError(
                        f"non-finite loss {loss.item()} at step {step} on pairs {batch.pair_ids}; "
                        f"state saved to {ck}")
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    _average_ddp_grads(model)
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in m.items():
                agg[k] = agg.get(k, 0.0) + float(accelerator.reduce(v.detach().float().to(accelerator.device),
                                                                    "mean")) / cfg.grad_accum
        dt = time.time() - t0
        pairs_done = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
        rec = {"step": step + 1, **{k: round(v, 6) for k, v in agg.items()},
               "grad_norm": round(float(grad_norm), 6) if grad_norm is not None else None,
               "lr": scheduler.get_last_lr()[0], "pairs_per_s": round(pairs_done / dt, 3),
               "tokens_per_s": round(tokens * accelerator.num_processes / dt, 1)}
        last = rec
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            log(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['rewards/accuracies']:.2f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.max_steps:
            log(evaluate(step + 1))
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.max_steps:
            save_checkpoint(step + 1)
    final_eval = evaluate(cfg.max_steps)
    if final_eval:
        log(final_eval)
    if log_f:
        log_f.close()
    accelerator.wait_for_everyone()
    model_dir = out / "model"
    # get_state_dict gathers FSDP / ZeRO-3 shards; every process must call it.
    full_state = None if cfg.lora.enabled else accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if cfg.lora.enabled and cfg.lora.merge_on_save:
            final = final.merge_and_unload()
        from ..models import save_model

        save_model(final, processor, model_dir, state_dict=full_state)
    accelerator.end_training()
    summary = {"model": str(model_dir), "steps": cfg.max_steps, "train_pairs": len(train_pairs),
               "val_pairs": len(val_pairs), "last": last, "eval": final_eval, "reference": cfg.reference,
               "loss": dict(loss_cfg.weights)}
    if accelerator.is_main_process:
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    return summary
