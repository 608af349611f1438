"""One rule for the beginning-of-sequence token, shared by every encoder."""
from __future__ import annotations

from collections.abc import Sequence


def with_bos(tokenizer, ids: Sequence[int]) -> list[int]:
    """``ids`` with the tokenizer's BOS in front, unless it is already there or the
    tokenizer has none."""
    bos = tokenizer.bos_token_id
    ids = list(ids)
    return ids if bos is None or ids[:1] == [bos] else [bos, *ids]
