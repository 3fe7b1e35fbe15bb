"""Text to token ids as kft feeds them: the start token where the model has one, and the start/end
token strings a chat format writes (Llama 2's `<s>`, `</s>`) as their ids where the tokenizer would
spell them out (SentencePiece reads control symbols in text as plain characters)."""

from __future__ import annotations

import re


def controls(tokenizer) -> dict[str, int]:
    """{start/end token string: its id} for those this tokenizer does not read as that one id."""
    found = {}
    for token, token_id in (
        (getattr(tokenizer, "start_token", None), tokenizer.start_token_id),
        (getattr(tokenizer, "end_token", None), tokenizer.end_token_id),
    ):
        if token and token_id is not None and [int(i) for i in tokenizer([token])[0]] != [token_id]:
            found[token] = token_id
    return found


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's token ids (no start token), control strings as their ids."""
    special = controls(tokenizer) if any("<" in t for t in texts) else {}
    if not special:
        return [[int(i) for i in ids] for ids in tokenizer(list(texts))] if texts else []
    pattern = re.compile("(" + "|".join(re.escape(t) for t in special) + ")")
    parts = [pattern.split(text) for text in texts]
    plain = [p for split in parts for p in split if p and p not in special]
    pieces = iter(tokenizer(plain) if plain else [])
    out = []
    for split in parts:
        ids = []
        for part in split:
            if part in special:
                ids.append(special[part])
            elif part:
                ids += [int(i) for i in next(pieces)]
        out.append(ids)
    return out


def start(tokenizer, text: str) -> list[int]:
    """The start token to put before `text`: none where the model has none (Qwen) or adds none (its
    preprocessor's `add_start_token`: SmolLM2), or where the text opens with it already."""
    token = getattr(tokenizer, "start_token", None)
    if (
        tokenizer.start_token_id is None
        or not getattr(tokenizer, "kft_add_start", True)
        or (token and text.startswith(token))
    ):
        return []
    return [tokenizer.start_token_id]


def with_start(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each prompt's ids, start token first where the model takes one."""
    return [start(tokenizer, t) + ids for t, ids in zip(texts, encode(tokenizer, texts))]
