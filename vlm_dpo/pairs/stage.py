"""`vlm-dpo pairs`: captions + the judge's detections (+ judged answers, + imports, + annotation judgements) -> one
pair dataset.

Writes, under the pairs folder:
    pairs.parquet      the dataset (datasets/parquet; images by path, relative to the image root)
    pairs.jsonl        the same rows, for eyes and grep
    stats.json         statistics (per source/kind/split, margins, length difference) + skipped rows
The stage is cheap (pure Python), so "resume" means: a finished stage with the same inputs and config is
skipped; otherwise it is rebuilt and written atomically.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..checks import FieldValueError, at_least, fraction
from ..ground import GroundingConfig, PromptConfig
from ..images import DataError, data_root, open_image, resolve_image
from ..judge import JudgeConfig, resolve_vocabulary
from ..judge.vocabulary import VOCABULARY_FILE_SUFFIXES
from ..keys import key as stage_key
from ..keys import path_fingerprint
from ..records import read_jsonl, write_text_atomic
from ..run import RunFolder
from ..vqa.colours import PALETTE_SUFFIXES, detection_colours, load_palette
from ..vqa.mine import VqaMineConfig, mine_answers, read_answers
from .dataset import MAX_CHARS, Rejections, dedupe, finite_json, save_pairs, split_by_image, statistics, validate_pair
from .io import import_pairs, pairs_from_judgements
from .mine import Cooccurrence, MineConfig, SyntheticContext, context_pairs, mine_image, synthetic_pairs


@dataclass
class PairsConfig:
    captions: str = ""  # captions JSONL (default: <out>/captions/train.jsonl)
    detections: str = ""  # the judge's detections JSONL (default: <out>/detections/train.jsonl)
    image_root: str = ""  # root of the relative image paths (default: the world / data.images)
    # world | coco | detections (the labels found in the detections file) | a .json/.yaml/.yml file of class ->
    # list of synonyms (e.g. data/vocabulary.example.yaml); judge.resolve_vocabulary, an unknown name is an error
    vocabulary: str = "world"
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    imports: list[str] = field(default_factory=list)  # JSONL/CSV/parquet/datasets folders of pairs (TRL ok)
    judgements: list[str] = field(default_factory=list)  # annotation app judgement JSONL files
    val_fraction: float = 0.1
    seed: int = 0
    # Synthetic VQA pairs (task "vqa", vlm_dpo/vqa/pairs.py) per caption pair from the captions: 0 = captions only,
    # 0.5 = one VQA pair for every two caption pairs (a seeded draw from one question per family and image).
    vqa_ratio: float = 0.0
    vqa_grounded: bool = True  # the grounding context after the question, as the captions' prompts have it
    # Share of the existence pairs about an absent kind that ask about the absent kind co-occurring most with the
    # detections (the one a yes-biased VLM wrongly affirms, as POPE's adversarial split asks); 0 = drawn uniformly.
    vqa_adversarial: float = 0.0
    # Colour questions in the VQA pairs, the colour read off each confident detection's box (vlm_dpo/vqa/colours.py):
    # "" = none (a detector gives no colours), "world" = the embedded world's palette, or a .json/.yaml/.yml file of
    # colour name -> [r, g, b].
    vqa_colours: str = ""
    # Each kept false-premise pair's question also asked about a kind that is there, its answer read off the box
    # over the refusal (kind vqa_true_premise, vqa/control.py): refusing then has to depend on the kind, not the words.
    vqa_premise_control: bool = False
    # Judged answers of `vlm-dpo ask` (<out>/vqa/<split>.jsonl, best with ask.n_samples > 0): mined VQA pairs (task
    # "vqa", a correct answer over a wrong one, vlm_dpo/vqa/mine.py) join the dataset. "" = none.
    answers: str = ""
    # The pipeline (and `vlm-dpo pairs`) asks the SFT VLM the robot's questions on the training split first, with
    # ask.n_samples sampled answers judged against the detections, and mines them: pairs.answers filled in.
    mine_answers: bool = False
    vqa_mine: VqaMineConfig = field(default_factory=VqaMineConfig)
    # Longest prompt / chosen / rejected text (characters) a pair may have; longer pairs (a runaway caption in an
    # import) are skipped and counted as "too_long". 0 = no limit.
    max_chars: int = MAX_CHARS

    def __post_init__(self) -> None:
        fraction(self, "val_fraction", "vqa_adversarial")
        at_least(self, 0, "max_chars", "vqa_ratio")
        if self.vqa_colours not in ("", "world") and not self.vqa_colours.lower().endswith(PALETTE_SUFFIXES):
            raise FieldValueError("vqa_colours", f"must be '', 'world' or a {'/'.join(PALETTE_SUFFIXES)} palette file, "
                                                 f"got {self.vqa_colours!r}")


# Settings added after runs were made, at the value that reproduces those runs: left out of the stage key there, so
# the runs keep their key (and their DPO stage).
_LATER_SETTINGS = {"vqa_adversarial": 0.0, "vqa_colours": "", "vqa_premise_control": False}


def pairs_config(cfg, run: RunFolder) -> PairsConfig:
    """cfg.pairs with the run folder's defaults filled in (captions/detections of the train split)."""
    pcfg = copy.deepcopy(cfg.pairs)
    pcfg.captions = pcfg.captions or str(run.captions(cfg.data.split))
    pcfg.detections = pcfg.detections or str(run.detections(cfg.data.split))
    pcfg.image_root = pcfg.image_root or str(data_root(cfg))
    if pcfg.mine_answers:
        pcfg.answers = pcfg.answers or str(run.vqa_answers(cfg.data.split))
    return pcfg


def run(cfg, run: RunFolder, *, progress: bool = True) -> dict:
    """The pairs stage: mine + synthesise + import pairs into <run>/pairs (describing first when the run's
    captions are missing); returns the statistics."""
    from .. import ask, describe

    pcfg = pairs_config(cfg, run)
    if pcfg.captions and not Path(pcfg.captions).exists():
        describe.run(cfg, run, cfg.data.split, progress=progress)
    ask.answers_to_mine(cfg, run, cfg.data.split, progress=progress)  # with pairs.mine_answers
    return build_pairs(pcfg, run.pairs_dir, ground=cfg.ground, prompt=cfg.prompt, progress=progress)


def _with_colours(record: dict, image: Path, palette: dict, min_score: float) -> dict:
    """The detections record with "color" on each confident detection whose colour the image shows (vqa/colours.py)."""
    confident = [i for i, d in enumerate(record["detections"]) if d["score"] >= min_score]
    read = detection_colours(open_image(image), [record["detections"][i] for i in confident], palette)
    colour = {i: c for i, c in zip(confident, read) if c}
    return record | {"detections": [d | {"color": colour[i]} if i in colour else d
                                    for i, d in enumerate(record["detections"])]}


def _vqa_share(cfg: PairsConfig, caption_recs: list[dict], dets: dict, vocab, cooc: Cooccurrence,
               n_caption: int) -> list[dict]:
    """vqa_ratio x n_caption synthetic VQA pairs, drawn (seeded) from every image's, in their original order; with
    vqa_premise_control, then the true-premise pair of each image with a false-premise pair drawn (the draw is the
    same as without them). `cooc`: the caption mining's co-occurrence of confident detections."""
    from ..vqa.control import true_premise_pairs
    from ..vqa.pairs import vqa_pairs

    def canon(d):
        return d | {"label": vocab.canonical(d["label"]) or d["label"]}

    records = {k: r | {"detections": [canon(d) for d in r["detections"]]} for k, r in dets.items()
               if not r.get("error")}
    palette = load_palette(cfg.vqa_colours) if cfg.vqa_colours else {}
    root = Path(cfg.image_root)
    candidates, controls = [], []
    for rec in caption_recs:
        if rec["image_id"] in records:
            record = records[rec["image_id"]]
            if palette:
                image = resolve_image(rec["file"], root)
                if image is None:
                    raise DataError(f"{cfg.captions} image {rec['image_id']}: {rec['file']!r} is outside the image "
                                    f"root {root}")
                record = _with_colours(record, image, palette, cfg.judge.min_score)
            candidates += vqa_pairs(record, rec["file"], rec.get("grounding"), list(vocab.classes),
                                    cooc.pair, min_score=cfg.judge.min_score, grounded=cfg.vqa_grounded,
                                    seed=cfg.seed, adversarial=cfg.vqa_adversarial, colours=tuple(palette))
            if cfg.vqa_premise_control:
                controls += true_premise_pairs(record, rec["file"], rec.get("grounding"), list(vocab.classes),
                                               cooc.pair, min_score=cfg.judge.min_score, grounded=cfg.vqa_grounded,
                                               seed=cfg.seed, adversarial=cfg.vqa_adversarial)
    k = min(len(candidates), round(cfg.vqa_ratio * n_caption))
    keep = set(random.Random(f"vqa-share/{cfg.seed}").sample(range(len(candidates)), k))
    kept = [p for i, p in enumerate(candidates) if i in keep]
    premised = {p["image_id"] for p in kept if p["kind"] == "vqa_false_premise"}
    return kept + [p for p in controls if p["image_id"] in premised]


def _answer_pairs(cfg: PairsConfig, root: Path, dets: dict) -> list[dict]:
    """The VQA pairs mined from pairs.answers; boxes from the detections file when it has the record's image."""
    pairs = []
    for rec in read_answers(cfg.answers, root):
        det = dets.get(rec["image_id"])
        same = det is not None and not det.get("error") and det.get("file") == rec["file"]
        pairs += mine_answers(rec, cfg.vqa_mine, boxes=[d["box"] for d in det["detections"]] if same else None)
    return pairs


def build_pairs(cfg: PairsConfig, out_dir: str | Path, *, ground: GroundingConfig | None = None,
                prompt: PromptConfig | None = None, progress: bool = True) -> dict:
    """Mine + synthesise + import pairs; returns the statistics (also in stats.json)."""
    out_dir = Path(out_dir)
    root = Path(cfg.image_root).resolve()
    inputs = [p for p in (cfg.captions, cfg.detections, cfg.answers, *cfg.imports, *cfg.judgements) if p]
    if cfg.vocabulary.lower().endswith(VOCABULARY_FILE_SUFFIXES):
        inputs.append(cfg.vocabulary)  # an edited vocabulary file judges differently: part of the key
    if cfg.vqa_colours.lower().endswith(PALETTE_SUFFIXES):
        inputs.append(cfg.vqa_colours)  # so does an edited palette
    ground = ground or GroundingConfig()
    prompt = prompt or PromptConfig()
    # The grounding and prompt configs shape the context pairs' prompts, so they are part of the key too;
    # inputs count by content, so a rewritten but equal file does not rebuild. Without answers the answer
    # settings shape nothing: left out, so runs made before they existed keep their key (and their DPO stage).
    # mine_answers shapes nothing itself: it fills in `answers`, which counts.
    shaping = {k: v for k, v in asdict(cfg).items()
               if k != "mine_answers" and (cfg.answers or k not in ("answers", "vqa_mine"))
               and not (k in _LATER_SETTINGS and v == _LATER_SETTINGS[k])}
    key = stage_key(shaping, ground, prompt, [(p, path_fingerprint(p)) for p in inputs])
    stats_path = out_dir / "stats.json"
    if stats_path.exists() and (out_dir / "pairs.parquet").exists():
        old = json.loads(stats_path.read_text())
        if old.get("key") == key:
            return old

    rejections = Rejections()
    pairs: list[dict] = []
    needed = cfg.detections and (cfg.captions or cfg.answers)
    dets = {r["image_id"]: r for r in read_jsonl(cfg.detections)} if needed else {}
    if cfg.captions:
        caption_recs = list(read_jsonl(cfg.captions))
        vocab = resolve_vocabulary(cfg.vocabulary, list(dets.values()))
        cooc = Cooccurrence([[vocab.canonical(d["label"]) or d["label"] for d in r["detections"]
                              if d.get("score", 1.0) >= cfg.judge.min_score] for r in dets.values()])
        ctx = SyntheticContext(vocab, list(vocab.classes), cooc, random.Random(f"synthetic/{cfg.mine.seed}"),
                               cfg.mine.adversarial_top)
        for rec in tqdm(caption_recs, desc="pairs", disable=not progress):
            where = f"{cfg.captions} image {rec.get('image_id')}"
            det = dets.get(rec["image_id"])
            if det is None or det.get("error"):
                rejections.add("no_detections_record", where)
                continue
            boxes = det["detections"]
            generator = {"model": rec.get("model"), "settings": rec.get("generation")}
            mined, best = mine_image(rec, boxes, det["width"], vocab, cfg.judge, cfg.mine, rec["file"], generator)
            pairs += mined
            if best is None:
                continue
            if cfg.mine.synthetic:
                pairs += synthetic_pairs(rec, best, boxes, vocab, cfg.judge, cfg.mine, ctx, rec["file"])
            if cfg.mine.context and rec.get("grounding"):
                pairs += context_pairs(rec, best, boxes, det["width"], det["height"], vocab, cfg.judge,
                                       ground, prompt, cfg.mine, ctx, rec["file"])
        if cfg.vqa_ratio:
            pairs += _vqa_share(cfg, caption_recs, dets, vocab, cooc, n_caption=len(pairs))
    if cfg.answers:
        pairs += _answer_pairs(cfg, root, dets)
    for path in cfg.imports:
        pairs += import_pairs(path, root, rejections=rejections, max_chars=cfg.max_chars)
    for path in cfg.judgements:
        pairs += pairs_from_judgements(list(read_jsonl(path)), rejections)
    checked = []
    for p in pairs:
        if validate_pair(p, f"pair {p['pair_id']} ({p['source']})", rejections, root, max_chars=cfg.max_chars):
            checked.append(p)
    merged: Counter = Counter()  # the same pair from two sources: kept once, the human one winning
    checked = dedupe(checked, rejections, merged)
    if not checked:
        raise ValueError(f"no usable pairs from {inputs}: {rejections.to_dict()}")
    checked = split_by_image(checked, cfg.val_fraction, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_pairs(checked, out_dir / "pairs.jsonl")
    save_pairs(checked, out_dir / "pairs.parquet")
    stats = statistics(checked) | {"merged": dict(merged), "rejections": rejections.to_dict(), "key": key}
    write_text_atomic(stats_path, json.dumps(finite_json(stats), indent=1, default=str, allow_nan=False))
    return stats
