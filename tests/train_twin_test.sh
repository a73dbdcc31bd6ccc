#!/usr/bin/env bash
# tests/train_tests.cmake: the PyTorch twin (examples/train/) against paddock-policy.
#   train_twin_test.sh parity CONFIG     examples/train/parity.py (exact: |dlogprob| <= 1e-4)
#   train_twin_test.sh roundtrip CONFIG  a file the twin writes is served by paddock-policy
#                                        and generates what the original file generates
#   train_twin_test.sh sft tiny          examples/train/sft_check.py
#   train_twin_test.sh copy tiny         examples/train/copy_check.py (the installed tokenizer)
#   train_twin_test.sh loop tiny         examples/train/loop_check.py (needs PADDOCK_BUILD, root)
set -euo pipefail
mode="$1"; cfg="$2"
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON3:-python3}"
policy="${PADDOCK_POLICY:?PADDOCK_POLICY: the paddock-policy binary}"
if ! "$py" -c 'import torch' 2>/dev/null; then
  echo "SKIP: python3-torch is not installed (scripts/install-deps.sh --train)"
  exit 77
fi
case "$mode" in
  parity)
    # 40 + 300 tokens: past the 128-token window, two HCA blocks, more CSA blocks than
    # tiny's top-16 and small's top-64. tiny also prints the emulated engine's mismatch;
    # small checks exact parity only (its twin is slower on this machine).
    extra=()
    [ "$cfg" = small ] && extra=(--exact)
    exec "$py" "$here/examples/train/parity.py" --policy-bin "$policy" --config "$cfg" \
      --sequences 2 --prompt-len 40 --new-tokens 300 "${extra[@]}" ;;
  roundtrip)
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    "$policy" --save-weights "$tmp/a.safetensors" --config "$cfg" --seed 7 >/dev/null
    "$py" "$here/examples/train/roundtrip_check.py" --policy-bin "$policy" --dir "$tmp" --config "$cfg" ;;
  sft)
    exec "$py" "$here/examples/train/sft_check.py" --policy-bin "$policy" ;;
  copy)
    exec "$py" "$here/examples/train/copy_check.py" --policy-bin "$policy" ;;
  loop)
    export OMP_NUM_THREADS=1
    exec "$py" "$here/examples/train/loop_check.py" --build "${PADDOCK_BUILD:?PADDOCK_BUILD: the build directory}" ;;
  *) echo "usage: $0 parity|roundtrip|sft|copy|loop CONFIG" >&2; exit 2 ;;
esac
