"""Copy augmentation for SFT: the same episode with other numbers.

The tiny model's number tokens have random, frozen embeddings, and the numbers a
task's solution copies (from the instruction into the command, from the
command's output into the answer) are drawn from narrow ranges. Trained on the
oracle episodes as they are, the model learns the training numbers' statistics,
not to copy: a held-out number is a token it never produced. This module
rewrites an exported episode so that every number that came from outside the
policy (the instruction, a tool result) is replaced, consistently at every
position after the system prompt, by another number token drawn at random. The
episode's copies stay copies (the command repeats the instruction's new number,
the answer the output's), while what the number *is* carries no information, so
the only way to predict it is to copy it.

Numbers the policy writes that occur in no instruction or tool result (constants
of a command) are left as they are, and so is the `N` of a tool result's
`[exit code N]`. The draw excludes the held-out ranges of the copying families
(HELDOUT_EXCLUDED), so a model trained this way copies held-out numbers it has
never seen at these positions.

Token ids come from the DeepSeek tokenizer.json the project installs
(scripts/install-deps.sh); the digit tokens are those whose text is 1-3 ASCII
digits (the tokenizer isolates runs of up to three digits).
"""
from __future__ import annotations

import json
import random
from typing import Dict, List, Optional, Sequence

DEFAULT_TOKENIZER = "/usr/local/share/paddock/deepseek-v3-tokenizer.json"

# The held-out instruction numbers of the families that copy them
# (examples/demo/make_tasks.py HELDOUT: x 70-99, sq 40-60, fact 60-90): never
# drawn as a replacement, so held-out copies are of tokens unseen in that role.
HELDOUT_EXCLUDED = frozenset(str(n) for n in range(40, 100))


class NumberTokens:
    """The tokenizer's digit tokens and the few structural ids the rewrite needs."""

    def __init__(self, tokenizer_path: str = DEFAULT_TOKENIZER):
        with open(tokenizer_path) as f:
            tk = json.load(f)
        vocab = tk["model"]["vocab"]
        added = {a["content"]: a["id"] for a in tk.get("added_tokens", [])}
        self.text: Dict[int, str] = {i: t for t, i in vocab.items()
                                     if 1 <= len(t) <= 3 and t.isascii() and t.isdigit()}
        self.user = added["<｜User｜>"]
        self.code = vocab["Ġcode"]
        self.space = vocab["Ġ"]
        self.pool = sorted(i for i, t in self.text.items() if t not in HELDOUT_EXCLUDED)
        self.heldout_pool = sorted(i for i, t in self.text.items() if t in HELDOUT_EXCLUDED)

    def is_number(self, token: int) -> bool:
        return token in self.text


def _exit_code_digit(ids: Sequence[int], i: int, nt: NumberTokens) -> bool:
    """ids[i] is the N of `[exit code N]` (tokens: "Ġcode", "Ġ", N)."""
    return (i >= 1 and ids[i - 1] == nt.code) or (i >= 2 and ids[i - 1] == nt.space and ids[i - 2] == nt.code)


def copied_numbers(ids: Sequence[int], mask: Sequence[int], nt: NumberTokens) -> List[int]:
    """The number tokens that reach the policy from outside it: in context tokens
    (loss_mask 0) after the first user turn, exit codes left out. Sorted."""
    try:
        start = list(ids).index(nt.user)
    except ValueError:
        return []
    out = set()
    for i in range(start, len(ids)):
        if not mask[i] and nt.is_number(ids[i]) and not _exit_code_digit(ids, i, nt):
            out.add(ids[i])
    return sorted(out)


def remap(ids: Sequence[int], mask: Sequence[int], nt: NumberTokens, rng: random.Random,
          pool: Optional[Sequence[int]] = None) -> List[int]:
    """The episode with each copied number replaced by a distinct number token from
    `pool` (default: every number token but HELDOUT_EXCLUDED), at every position
    after the first user turn (exit codes kept). The loss mask is unchanged."""
    src = copied_numbers(ids, mask, nt)
    if not src:
        return list(ids)
    pool = nt.pool if pool is None else pool
    dst = rng.sample(list(pool), len(src))
    sub = dict(zip(src, dst))
    start = list(ids).index(nt.user)
    out = list(ids)
    for i in range(start, len(out)):
        t = out[i]
        if t in sub and not _exit_code_digit(out, i, nt):
            out[i] = sub[t]
    return out


def copy_targets(ids: Sequence[int], mask: Sequence[int], nt: NumberTokens) -> List[int]:
    """Positions a whose next token ids[a + 1] is a policy token (loss_mask 1) equal to
    a copied number: where the model must copy (for measuring)."""
    src = set(copied_numbers(ids, mask, nt))
    return [a for a in range(len(ids) - 1) if mask[a + 1] and ids[a + 1] in src]


def induction_sample(rng: random.Random, nt: NumberTokens, vocab_size: int, min_len: int = 16,
                     max_len: int = 56, number_share: float = 0.3):
    """A synthetic copy sequence: L random tokens, then the same L tokens again, the
    loss on the repeat (from its second token: the first has no cue). Dense practice
    for the circuit every copy uses (find where the current token occurred before,
    emit what followed it), short enough to sit in the sliding window. A share of the
    tokens are number tokens (never HELDOUT_EXCLUDED ones); the rest any token but
    those. Returns (ids, loss_mask)."""
    n = rng.randint(min_len, max_len)
    excluded = set(nt.heldout_pool)
    seq = []
    while len(seq) < n:
        t = rng.choice(nt.pool) if rng.random() < number_share else rng.randrange(2, vocab_size)
        if t not in excluded:
            seq.append(t)
    return seq + seq, [0] * (n + 1) + [1] * (n - 1)
