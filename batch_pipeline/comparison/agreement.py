"""How often two models give the same answer: exact matches, and a similarity that forgives case and spacing."""

import difflib
from itertools import combinations

from pydantic import BaseModel


class PairAgreement(BaseModel):
    model_a: str
    model_b: str
    compared: int
    exact_match_rate: float | None
    mean_similarity: float | None


def normalized_words(text: str) -> list[str]:
    return text.casefold().split()


def similarity(a: str, b: str) -> float:
    """difflib's ratio over words, not characters: as telling for answers, and fast on long ones."""
    words_a, words_b = normalized_words(a), normalized_words(b)
    if not words_a and not words_b:
        return 1.0
    return difflib.SequenceMatcher(None, words_a, words_b, autojunk=False).ratio()


def agreement(model_a: str, model_b: str, outputs_a: dict[str, str | None],
              outputs_b: dict[str, str | None]) -> PairAgreement:
    """Compares only requests both models answered; a failure is not a disagreement about content."""
    pairs = [(a, outputs_b[custom_id]) for custom_id, a in outputs_a.items()
             if a is not None and outputs_b.get(custom_id) is not None]
    if not pairs:
        return PairAgreement(model_a=model_a, model_b=model_b, compared=0, exact_match_rate=None,
                             mean_similarity=None)
    exact = sum(a == b for a, b in pairs) / len(pairs)
    mean_similarity = sum(similarity(a, b) for a, b in pairs) / len(pairs)
    return PairAgreement(model_a=model_a, model_b=model_b, compared=len(pairs),
                         exact_match_rate=round(exact, 4), mean_similarity=round(mean_similarity, 4))


def pairwise_agreement(outputs: dict[str, dict[str, str | None]]) -> list[PairAgreement]:
    """`outputs`: model -> custom_id -> answer text (None when that request failed)."""
    return [agreement(a, b, outputs[a], outputs[b]) for a, b in combinations(outputs, 2)]
