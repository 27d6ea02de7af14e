#!/usr/bin/env bash
# Issue #16's check on world seeds no project file names, through the user-folder path: a finished run's SFT and
# DPO models (and its detector) on the test scenes of another world seed, given as a folder of images with their
# annotations, as a user's own photos would be.
#
#   bash scripts/user_folder_check.sh RUN SEED [k=v ...]      e.g. bash scripts/user_folder_check.sh runs/demo 7
#
# Run it from where RUN was made (its model paths may be relative). Writes RUN-user-seed<SEED>/ (metrics.json,
# eval/, report/) and prints one line: CHAIR_i, recall and mean words, SFT -> DPO.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/user_folder_check.sh RUN SEED [k=v ...]" >&2
  exit 2
fi
run=${1%/}
seed=$2
shift 2
VLM_DPO=${VLM_DPO:-vlm-dpo}
config="$run/config.yaml"  # the run's resolved config: its cache, detector and grounding
[ -f "$run/metrics.json" ] || { echo "$run: no metrics.json (not a finished run)" >&2; exit 2; }
[ -f "$config" ] || { echo "$run: no config.yaml" >&2; exit 2; }
out="$run-user-seed$seed"
models=$(python3 - "$run/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))["models"]
if not {"sft", "dpo"} <= set(m):
    sys.exit(f"{sys.argv[1]}: needs an sft and a dpo model, has {sorted(m)}")
print("{sft: %s, dpo: %s}" % (m["sft"]["model"], m["dpo"]["model"]))
EOF
)
mkdir -p "$out"
# The new world's train and val splits are not used: keep them small.
$VLM_DPO world "$config" "world.seed=$seed" world.n_train=10 world.n_val=10 "$@" > "$out/world.json" \
  2> "$out/world.log" || { tail -5 "$out/world.log" >&2; exit 1; }
world=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["world"])' "$out/world.json")
grep '"split": "test"' "$world/annotations.jsonl" > "$out/annotations.jsonl"
$VLM_DPO eval "$config" "out=$out" "data.images=$world/images/test" "eval.annotations=$out/annotations.jsonl" \
  "eval.models=$models" "$@" > "$out/eval.log" 2>&1 || { tail -20 "$out/eval.log" >&2; exit 1; }
python3 - "$out/metrics.json" "$seed" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))["models"]
a, b = m["sft"], m["dpo"]
cut = f"{b['chair_i'] / a['chair_i'] - 1:+.0%}" if a["chair_i"] else "n/a"
print(f"world seed {sys.argv[2]}, {json.load(open(sys.argv[1]))['held_out_images']} images, SFT -> DPO: "
      f"CHAIR_i {a['chair_i']:.3f} -> {b['chair_i']:.3f} ({cut}), "
      f"recall {a['recall']:.3f} -> {b['recall']:.3f} ({b['recall'] / a['recall'] if a['recall'] else float('nan'):.2f}x), "
      f"words {a['mean_words']:.2f} -> {b['mean_words']:.2f} ({b['mean_words'] / a['mean_words'] if a['mean_words'] else float('nan'):.2f}x)")
EOF
