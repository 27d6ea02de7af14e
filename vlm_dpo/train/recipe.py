"""The DPO training recipe on accelerate: one CPU, one GPU, or many through `accelerate launch`.

    recipe = DPORecipe(cfg).setup()     # accelerator, pairs, policy (+ LoRA, freezing), reference, optimizer, resume
    for step in range(recipe.start, cfg.max_steps):
        record = recipe.train_step(step)  # one optimizer step: grad_accum micro-batches, clip, AdamW, schedule
    recipe.evaluate(step)                 # preference metrics on the val pairs
    recipe.save_checkpoint(step) / recipe.save_model()
    train_dpo(cfg) == DPORecipe(cfg).run()  (what the CLI, the pipeline, the benchmark and the tests call)

Written here rather than on TRL's Trainer because the forward pass is ours (one vision pass per pair, the prompt
prefix once per pair where the family allows it, LM head at completion positions only, precomputed references);
TRL is the correctness oracle in the tests (tests/train/test_trl_parity.py) and the peer in bench/dpo_step.py.
The forward lives in `PairForward.forward`, the module `accelerator.prepare` wraps, so DDP's gradient sync (and
autocast under mixed precision) apply as designed. Batches and data order: see batches.py.

Output folder (`output_dir`):
    metrics.jsonl                one line per logged step (train) and per evaluation (eval/...)
    checkpoints/step-<N>/        accelerate state (model safetensors, optimizer, scheduler, RNG) + trainer.json
    reference/ref-*.safetensors  precomputed reference log-probs (reference=precomputed)
    model/                       final model (save_pretrained; LoRA merged when lora.merge_on_save), processor
    summary.json                 final metrics and paths
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checks import at_least, positive
from ..families import family_of
from ..keys import portable
from ..pairs.dataset import load_pairs
from ..records import read_jsonl, write_jsonl_atomic, write_text_atomic
from ..schedule import lr_lambda
from .batches import DataOrder, TrainBatch, make_batch
from .losses import LossConfig, PreferenceLogps, RewardShift, needs_corrupt, needs_reference, preference_loss
from .engines import fill_deepspeed_config, full_weights_at_load, weights_on_main_only
from .forward import PairForward
from .recompute import enable_recompute, skip_frozen_layers
from .reference import (REFERENCE_KINDS, ReferenceCache, StaleReferenceError, frozen_copy, no_grad_ctx,
                        precompute_reference)


@dataclass
class LoRAConfig:
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
    reference_model: str = ""  # frozen / precomputed reference from another model; empty = the initial policy
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    freeze_vision: bool = False  # vision tower / connector: the family's registry entry names them
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
    gradient_checkpointing: bool = False  # full: every layer reruns its forward in backward (recompute.py)
    # layers keep matmul/attention outputs and recompute the rest (recompute.py): less activation memory for a
    # ~10% slower step, the same gradients
    selective_recompute: bool = True
    shared_vision: bool = True  # one vision-encoder pass per pair
    shared_prefix: bool = True  # image + prompt once per pair, both completions after it (supported families)
    full_logits: bool = False  # the model's own forward + head (full logits) instead of the completion-only head
    shuffle: bool = True  # False: pairs in file order, epoch after epoch (curricula; the benchmark's fixed order)
    # Also train what the chat template writes after the end-of-turn token (e.g. a newline), as TRL does;
    # default: completions end where generation stops (train/collate.py render_completion).
    template_tail: bool = False
    max_length: int = 0  # 0 = no limit; prompts (image tokens included) are never truncated
    dtype: str = "float32"
    eval_every: int = 50
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    trackers: list[str] = field(default_factory=list)  # e.g. [tensorboard], [wandb]
    resume: bool = True
    dist_timeout_s: int = 7200  # how long a process waits for the others at a collective (multi-process runs)


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: language model (lr), vision tower (lr_vision), connector (lr_projector)."""
    fam = family_of(model)
    rest, vision, connector = [], [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (connector if fam.is_connector(name) else vision if fam.is_vision(name) else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr}, {"params": vision, "lr": cfg.lr_vision or cfg.lr},
              {"params": connector, "lr": cfg.lr_projector or cfg.lr}]
    return [g for g in groups if g["params"]]


def tied_duplicates(model) -> set[str]:
    """Names under which an already-listed parameter appears again (LM head tied to the embeddings)."""
    seen, again = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            again.add(name)
        seen.add(id(p))
    return again


def freeze(model, cfg: TrainConfig) -> None:
    fam = family_of(model)
    for name, p in model.named_parameters():
        if (cfg.freeze_vision and fam.is_vision(name)) or (cfg.freeze_projector and fam.is_connector(name)):
            p.requires_grad_(False)


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first. A checkpoint is written into `step-N.tmp/` and renamed to `step-N/`
    only after its last file (trainer.json), so a process killed mid-write leaves no `step-N/`."""
    ck = out / "checkpoints"
    if not ck.exists():
        return []
    done = [p for p in ck.glob("step-*") if p.is_dir() and p.name.split("-")[1].isdigit()
            and (p / "trainer.json").exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


# TrainConfig fields that do not change what is trained: where it is logged, how often it is saved, and
# recomputation (it reruns the same ops on the same inputs), so a run may resume under other values of these,
# e.g. with checkpointing switched on after running out of memory.
NOT_IN_RUN_KEY = ("output_dir", "eval_every", "save_every", "keep_checkpoints", "log_every", "trackers", "resume",
                  "dist_timeout_s", "gradient_checkpointing", "selective_recompute")


def stage_settings(cfg: TrainConfig) -> TrainConfig:
    """`cfg` as the pipeline's DPO stage key sees it: the settings that do not change the trained weights
    (NOT_IN_RUN_KEY, but the output folder) at their defaults. Switching recomputation on after running out of
    memory, or evaluating more often, then keeps a finished stage; a run made at the defaults keeps its key."""
    defaults = TrainConfig()
    return replace(cfg, **{k: getattr(defaults, k) for k in NOT_IN_RUN_KEY if k != "output_dir"})


def run_settings(cfg: TrainConfig) -> dict:
    """What a checkpoint's trajectory depends on: resuming it under other settings would mix two runs."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_RUN_KEY}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


class DPORecipe:
    """setup / train_step / evaluate / save_checkpoint / save_model / run. See the module docstring."""

    def __init__(self, cfg: TrainConfig, *, progress: bool = True):
        # replace() resolves loss weights / mixture again in case they were changed after construction
        self.cfg = replace(cfg, loss=replace(cfg.loss))
        self.progress = progress
        self.start = 0

    # -- setup ----------------------------------------------------------------------------------------------

    def setup(self) -> "DPORecipe":
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from ..models import load_model_and_processor

        cfg = self.cfg
        if cfg.reference not in REFERENCE_KINDS:
            raise ValueError(f"train.reference must be one of {REFERENCE_KINDS}, got {cfg.reference!r}")
        self.use_ref = needs_reference(cfg.loss.weights)
        self.corruption = cfg.loss.corruption if needs_corrupt(cfg.loss.weights) else None
        if self.use_ref and cfg.reference == "none":
            raise ValueError(f"losses {list(cfg.loss.weights)} need a reference; set train.reference")
        if cfg.reference == "lora_disabled" and not cfg.lora.enabled:
            raise ValueError("train.reference=lora_disabled needs train.lora.enabled=true")
        self.out = Path(cfg.output_dir)
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        # collectives wait up to dist_timeout_s (a long reference precompute or checkpoint must not kill a rank)
        self.accelerator = acc = Accelerator(
            gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
            log_with=cfg.trackers or None, project_dir=str(self.out),
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist_timeout_s))])
        set_seed(cfg.seed)
        self.image_root = Path(cfg.image_root or ".").resolve()
        pairs = load_pairs(cfg.pairs)
        self.train_pairs = [p for p in pairs if p.get("split", "train") == "train"]
        self.val_pairs = [p for p in pairs if p.get("split") == "val"]
        if not self.train_pairs:
            raise ValueError(f"{cfg.pairs}: no pairs with split 'train'")

        fill_deepspeed_config(acc, cfg)
        with full_weights_at_load(acc):
            model, self.processor = load_model_and_processor(cfg.model, dtype=cfg.dtype, device="cpu")
        self.model_type = getattr(model.config, "model_type", "")
        self.recompute = enable_recompute(model, full=cfg.gradient_checkpointing, selective=cfg.selective_recompute)
        if cfg.lora.enabled:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                     lora_dropout=cfg.lora.dropout,
                                                     target_modules=list(cfg.lora.target_modules)))
        freeze(model, cfg)
        skip_frozen_layers(model)
        # Under FSDP's RAM-efficient loading `prepare` places the shards; moving here would put a whole copy on
        # every device first (and older transformers load meta tensors on the non-main processes).
        if not weights_on_main_only(acc):
            model.to(acc.device)

        self.order = DataOrder(len(self.train_pairs), cfg.batch_size, acc.num_processes, acc.process_index, cfg.seed,
                               shuffle=cfg.shuffle)
        self.setup_reference(model)

        optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(total=cfg.max_steps, warmup=cfg.warmup_steps, schedule=cfg.schedule))
        # The scheduler stays unprepared: accelerate would step it once per process (it assumes a sharded
        # dataloader), while our steps are global optimizer steps. Registered so checkpoints carry it.
        self.forward, self.optimizer = acc.prepare(PairForward.of(model, cfg), optimizer)
        acc.register_for_checkpointing(self.scheduler)
        # BCO's reward shift from every rank's rewards, so all ranks keep one delta (as one process would)
        self.reward_shift = RewardShift(gather=acc.gather if acc.num_processes > 1 else None)
        self.check_settings()
        if cfg.resume and list_checkpoints(self.out):
            last = list_checkpoints(self.out)[-1]
            acc.load_state(str(last))
            state = json.loads((last / "trainer.json").read_text())
            self.start = state["step"]
            self.reward_shift.load_state_dict(state["reward_shift"])
        if cfg.trackers:
            acc.init_trackers("vlm_dpo", config={"lr": cfg.lr, "beta": cfg.loss.beta, "batch_size": cfg.batch_size,
                                                 "reference": cfg.reference})
        return self

    def setup_reference(self, model) -> None:
        """The reference: a frozen copy (of the policy, or of `reference_model`), a precomputed cache, the
        policy with its adapter disabled (nothing to build), or none."""
        cfg, acc = self.cfg, self.accelerator
        self.ref_model, self.ref_cache, self.timing = None, None, {}
        if not self.use_ref or cfg.reference in ("none", "lora_disabled"):
            return
        if cfg.reference == "frozen" and acc.distributed_type.value in ("DEEPSPEED", "FSDP"):
            raise ValueError("a frozen reference copy is not sharded under FSDP/DeepSpeed: use train.reference="
                             "precomputed (or lora_disabled with LoRA)")
        ref = model
        if cfg.reference_model:
            from ..models import load_model_and_processor

            with full_weights_at_load(acc):
                ref, _ = load_model_and_processor(cfg.reference_model, dtype=cfg.dtype, device=str(acc.device))
        if cfg.reference == "frozen":
            self.ref_model = PairForward.of(frozen_copy(ref), cfg)
            return
        t = time.perf_counter()
        self.ref_cache = self._precompute(ref, progress=self.progress and acc.is_main_process)
        self.timing["reference_s"] = time.perf_counter() - t

    def _precompute(self, ref, progress: bool) -> ReferenceCache:
        """The precomputed reference of the pairs this run will visit (a short run on a big pair set sees a
        fraction of it) and the val pairs, before any sharding; every process computes its share, all gather the
        table. Where only the main process holds the weights, it computes the table alone and sends it (the
        others wait up to dist_timeout_s)."""
        cfg, acc = self.cfg, self.accelerator
        used = [self.train_pairs[i] for i in self.order.used(cfg.max_steps * cfg.grad_accum)]
        args = (self.processor, used + self.val_pairs, cfg, self.image_root, self.out / "reference")
        if not weights_on_main_only(acc):
            return precompute_reference(ref, *args, autocast=acc.autocast, accelerator=acc, progress=progress)
        from accelerate.utils import broadcast_object_list

        table = [precompute_reference(ref, *args, autocast=acc.autocast, progress=progress)
                 if acc.is_main_process else None]
        return broadcast_object_list(table, from_process=0)[0]

    def recompute_reference(self, reason: str) -> None:
        """A precomputed reference that disagrees with the batch (StaleReferenceError) is computed again from the
        reference weights on disk. Single process only: under several, each rank would decide alone."""
        if self.accelerator.num_processes > 1:
            raise StaleReferenceError(f"{reason}; delete {self.out / 'reference'} and restart") from None
        warnings.warn(f"precomputed reference is stale ({reason}): computing it again", stacklevel=2)
        from ..models import load_model_and_processor

        shutil.rmtree(self.out / "reference", ignore_errors=True)
        ref, _ = load_model_and_processor(self.cfg.reference_model or self.cfg.model, dtype=self.cfg.dtype,
                                          device=str(self.accelerator.device))
        self.ref_cache = self._precompute(ref, progress=False)

    def check_settings(self) -> None:
        """An output folder holds one run: checkpoints or a model made under other settings are never resumed or
        overwritten (the error names what changed); a new folder records the settings."""
        path = self.out / "settings.json"
        now = json.loads(json.dumps(run_settings(self.cfg), default=str))
        if path.exists():
            # keys that left the run key since (recomputation settings) do not make an old folder "other"
            old = {k: v for k, v in json.loads(path.read_text()).items() if k not in NOT_IN_RUN_KEY}
            # compared as portable paths: a run folder moved or copied with its checkpoints still resumes
            changed = _differences(portable(old), portable(now))
            if changed:
                raise ValueError(f"{self.out} holds a training run with other settings ({'; '.join(changed)}); "
                                 f"choose another output folder or delete this one")
        elif list_checkpoints(self.out) or (self.out / "model").exists():
            raise ValueError(f"{self.out} holds a training run whose settings were not recorded; choose another "
                             f"output folder or delete this one")
        elif self.accelerator.is_main_process:
            write_text_atomic(path, json.dumps(now, indent=1))
        self.accelerator.wait_for_everyone()

    @property
    def policy(self):
        """The transformers (or PEFT) model being trained, without the accelerate / DDP wrappers."""
        return self.accelerator.unwrap_model(self.forward).model

    # -- one step -------------------------------------------------------------------------------------------

    def batch(self, rows: list[dict]) -> TrainBatch:
        return make_batch(rows, self.processor, image_root=self.image_root, model_type=self.model_type,
                          max_length=self.cfg.max_length, corruption=self.corruption, seed=self.cfg.seed,
                          template_tail=self.cfg.template_tail).to(self.accelerator.device)

    def micro_batch(self, micro_step: int) -> TrainBatch:
        """This process's pairs of one micro-step (see batches.DataOrder)."""
        rows = [self.train_pairs[i] for i in self.order.indices(micro_step)]
        return self.batch(rows)

    def logps(self, batch: TrainBatch) -> PreferenceLogps:
        """Policy log-probs (through the prepared module) and the reference's, for the losses."""
        c, r, cc = self.forward(batch)
        refs = {}
        if self.use_ref:
            if self.ref_cache is not None:
                counts = {"chosen_tokens": c.n_tokens, "rejected_tokens": r.n_tokens}
                try:
                    got = self.ref_cache.lookup(batch.pair_ids, c.sum.device, **counts)
                except StaleReferenceError as e:
                    self.recompute_reference(str(e))
                    got = self.ref_cache.lookup(batch.pair_ids, c.sum.device, **counts)
                refs = {"ref_chosen": got["chosen"], "ref_rejected": got["rejected"],
                        "ref_chosen_corrupt": got.get("chosen_corrupt")}
            else:
                with torch.no_grad(), no_grad_ctx(self.cfg.reference, self.policy), self.accelerator.autocast():
                    rc, rr, rcc = (self.ref_model or self.forward)(batch)
                refs = {"ref_chosen": rc.sum.detach(), "ref_rejected": rr.sum.detach(),
                        "ref_chosen_corrupt": rcc.sum.detach() if rcc is not None else None}
        return PreferenceLogps(policy_chosen=c.sum, policy_rejected=r.sum, chosen_tokens=c.n_tokens.float(),
                               rejected_tokens=r.n_tokens.float(),
                               policy_chosen_corrupt=cc.sum if cc is not None else None, **refs)

    def train_step(self, step: int) -> dict:
        """One optimizer step (grad_accum micro-batches); returns its log record."""
        cfg, acc = self.cfg, self.accelerator
        t0 = time.time()
        agg, tokens, grad_norm, data_s = {}, 0, None, 0.0
        for micro in range(cfg.grad_accum):
            t_data = time.perf_counter()
            batch = self.last_batch = self.micro_batch(step * cfg.grad_accum + micro)
            data_s += time.perf_counter() - t_data
            tokens += batch.n_tokens
            with acc.accumulate(self.forward):
                loss, m = preference_loss(self.logps(batch), cfg.loss, self.reward_shift)
                # decided by all ranks together: one rank alone in the checkpoint's barriers would hang the rest
                bad = torch.tensor(0.0 if torch.isfinite(loss) else 1.0, device=acc.device)
                if acc.num_processes > 1:
                    bad = acc.reduce(bad, "sum")
                if bad.item() > 0:
                    ck = self.save_checkpoint(step, name=f"nan-step-{step}")
                    where = (f"on pairs {batch.pair_ids}" if not torch.isfinite(loss)
                             else "on another process's pairs")
                    raise FloatingPointError(f"non-finite loss at step {step} {where}; state saved to {ck}")
                acc.backward(loss)
                if acc.sync_gradients:
                    grad_norm = acc.clip_grad_norm_(self.forward.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                if acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            for k, v in m.items():
                agg[k] = agg.get(k, 0.0) + float(acc.reduce(v.detach().float().to(acc.device), "mean")) / cfg.grad_accum
        dt = time.time() - t0
        pairs_done = cfg.batch_size * cfg.grad_accum * acc.num_processes
        return {"step": step + 1, **{k: round(v, 6) for k, v in agg.items()},
                "grad_norm": round(float(grad_norm), 6) if grad_norm is not None else None,
                "lr": self.scheduler.get_last_lr()[0], "pairs_per_s": round(pairs_done / dt, 3), "data_s": round(data_s, 4),
                "tokens_per_s": round(tokens * acc.num_processes / dt, 1)}

    def evaluate(self, step: int) -> dict:
        """Loss metrics on the val pairs (mean over pairs), as `eval/<metric>`; {} without val pairs."""
        if not self.val_pairs:
            return {}
        bs = self.cfg.batch_size
        self.forward.eval()
        sums, n = {}, 0
        with torch.no_grad():
            for s in range(0, len(self.val_pairs), bs):
                rows = self.val_pairs[s:s + bs]
                _, m = preference_loss(self.logps(self.batch(rows)), self.cfg.loss)
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(rows)
                n += len(rows)
        self.forward.train()
        return {f"eval/{k}": v / n for k, v in sums.items()} | {"step": step}

    # -- saving ---------------------------------------------------------------------------------------------

    def save_checkpoint(self, step: int, name: str | None = None) -> Path:
        """accelerate's state + trainer.json into `<name>.tmp/`, then renamed: only complete checkpoints exist."""
        acc = self.accelerator
        path = self.out / "checkpoints" / (name or f"step-{step}")
        tmp = path.with_name(path.name + ".tmp")
        acc.wait_for_everyone()
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_text_atomic(tmp / "trainer.json",
                              json.dumps({"step": step, "reward_shift": self.reward_shift.state_dict()}))
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
            for old in list_checkpoints(self.out)[:-self.cfg.keep_checkpoints] if name is None else []:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def save_model(self) -> Path:
        """The final model (save_pretrained) + processor in <output_dir>/model; every process must call it."""
        acc, cfg = self.accelerator, self.cfg
        acc.wait_for_everyone()
        model_dir = self.out / "model"
        # get_state_dict gathers FSDP / ZeRO-3 shards; every process must call it. Its keys are the
        # PairForward's ("model." + the model's own).
        full_state = None
        if not cfg.lora.enabled:
            tied = tied_duplicates(self.policy)  # a gathered (FSDP) state dict holds a copy under each tied name
            full_state = {k.removeprefix("model."): v for k, v in acc.get_state_dict(self.forward).items()
                          if k.removeprefix("model.") not in tied}
        if acc.is_main_process:
            from ..models import save_model

            final = self.policy
            if cfg.lora.enabled and cfg.lora.merge_on_save:
                final = final.merge_and_unload()
            save_model(final, self.processor, model_dir, state_dict=full_state)
        return model_dir

    # -- the loop -------------------------------------------------------------------------------------------

    def _open_log(self):
        """metrics.jsonl for appending, keeping only what the checkpoint we resume from had seen (the replayed
        steps are logged again); None on non-main processes."""
        path = self.out / "metrics.jsonl"
        if not self.accelerator.is_main_process:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        if path.exists():
            kept = [r for r in read_jsonl(path, allow_torn_tail=True) if r["step"] <= self.start]
            write_jsonl_atomic(path, kept)
        return path.open("a")

    def run(self) -> dict:
        """setup (unless done), train from the last checkpoint to max_steps, evaluate, save; returns a summary."""
        if not hasattr(self, "accelerator"):
            self.setup()
        cfg, acc = self.cfg, self.accelerator
        log_f = self._open_log()

        def log(rec: dict) -> None:
            if log_f:
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
            if cfg.trackers:
                acc.log({k: v for k, v in rec.items() if k != "step"}, step=rec["step"])

        self.forward.train()
        bar = tqdm(range(self.start, cfg.max_steps), desc="dpo", initial=self.start, total=cfg.max_steps,
                   disable=not (self.progress and acc.is_main_process))
        last = {}
        for step in bar:
            last = rec = self.train_step(step)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
                log(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['rewards/accuracies']:.2f}")
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.max_steps:
                log(self.evaluate(step + 1))
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.max_steps:
                self.save_checkpoint(step + 1)
        final_eval = self.evaluate(cfg.max_steps)
        if final_eval:
            log(final_eval)
        if log_f:
            log_f.close()
        model_dir = self.save_model()
        # Every rank waits for the main one to finish writing before any tears down its process group: a rank
        # that exits while another is still in gloo calls was seen once to abort at exit (SIGABRT, CI log of
        # 2026-12-02, FSDP2 resume; not reproduced in 8 reruns under load).
        acc.wait_for_everyone()
        acc.end_training()
        summary = {"model": str(model_dir), "steps": cfg.max_steps, "train_pairs": len(self.train_pairs),
                   "val_pairs": len(self.val_pairs), "last": last, "eval": final_eval, "reference": cfg.reference,
                   "loss": dict(cfg.loss.weights)}
        if acc.is_main_process:
            write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=1))
        return summary


def check_ranges(cfg: TrainConfig) -> None:
    """TrainConfig's range checks (vlm_dpo/checks.py). config.load_config runs them on a loaded config, naming the
    full key (`train.batch_size ...`); train_dpo runs them too, so a TrainConfig built in Python is checked before
    any work."""
    at_least(cfg, 1, "batch_size", "grad_accum", "max_steps")
    at_least(cfg, 0, "warmup_steps", "weight_decay", "lr_vision", "lr_projector", "max_grad_norm", "max_length",
             "eval_every", "save_every", "keep_checkpoints", "log_every")
    positive(cfg, "lr")


def train_dpo(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Train the policy on the pairs; returns a summary (final metrics, paths). See the module docstring."""
    check_ranges(cfg)
    return DPORecipe(cfg, progress=progress).run()
