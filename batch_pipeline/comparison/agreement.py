"""How often two models give the same answer: exact matches, and a similarity that forgives case and spacing;
for embeddings, how closely two models place each input (cosine)."""

import difflib
import math
from itertools import combinations

from pydantic import BaseModel


class PairAgreement(BaseModel):
    model_a: str
    model_b: str
    compared: int
    exact_match_rate: float | None
    mean_similarity: float | None
    # Embeddings of one dimension only: vectors of different models' own sizes share no space.
    mean_cosine: float | None = None


def normalized_words(text: str) -> list[str]:
    return text.casefold().split()


def similarity(a: str, b: str) -> float:
    """difflib's ratio over words, not characters: as telling for answers, and fast on long ones."""
    words_a, words_b = normalized_words(a), normalized_words(b)
    if not words_a and not words_b:
        return 1.0
    return difflib.SequenceMatcher(None, words_a, words_b, autojunk=False).ratio()


def cosine(a: list[float], b: list[float]) -> float:
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norms if norms else 0.0


Answer = str | list[float] | None


def agreement(model_a: str, model_b: str, outputs_a: dict[str, Answer], outputs_b: dict[str, Answer]) -> PairAgreement:
    """Compares only requests both models answered; a failure is not a disagreement about content."""
    pairs = [(a, outputs_b[custom_id]) for custom_id, a in outputs_a.items()
             if a is not None and outputs_b.get(custom_id) is not None]
    if not pairs or not isinstance(pairs[0][0], str):
        vectors = [(a, b) for a, b in pairs if isinstance(a, list) and isinstance(b, list) and len(a) == len(b)]
        mean_cosine = round(sum(cosine(a, b) for a, b in vectors) / len(vectors), 4) if vectors else None
        return PairAgreement(model_a=model_a, model_b=model_b, compared=len(vectors), exact_match_rate=None,
                             mean_similarity=None, mean_cosine=mean_cosine)
    exact = sum(a == b for a, b in pairs) / len(pairs)
    mean_similarity = sum(similarity(a, b) for a, b in pairs) / len(pairs)
    return PairAgreement(model_a=model_a, model_b=model_b, compared=len(pairs),
                         exact_match_rate=round(exact, 4), mean_similarity=round(mean_similarity, 4))


def pairwise_agreement(outputs: dict[str, dict[str, Answer]]) -> list[PairAgreement]:
    """`outputs`: model -> custom_id -> answer text or embedding (None when that request failed)."""
    return [agreement(a, b, outputs[a], outputs[b]) for a, b in combinations(outputs, 2)]
