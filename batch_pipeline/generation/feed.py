"""What an engine is fed, and in which order: the two things a batch file lets us do better than an
online server.

Rows that share a prompt prefix (a long system prompt, few-shot examples) are fed side by side, so the
engine's prefix cache still holds the prefix when the next row needs it; in file order the cache
evicts it between uses once the prompts outnumber what it holds. A deterministic request (greedy,
seeded, or an embedding) that is an exact copy of one in flight is not generated again: every copy
gets the answer of the first.
"""

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice

from batch_pipeline.core.registry import SamplingDefaults
from batch_pipeline.generation.engine.interface import StreamingEngine
from batch_pipeline.protocol.answers import EngineRequest, EngineResult
from batch_pipeline.protocol.endpoints import ENDPOINTS

# A prefix is compared in blocks of this many characters, up to this many blocks: rows agreeing on the
# first k blocks are fed together, whatever follows.
_BLOCK_CHARS = 512
_MAX_BLOCKS = 64
# Fields that change nothing in an answer: copies differing only in them are the same request.
_NO_EFFECT = frozenset({"user", "metadata", "store", "service_tier"})
# Answers kept after their request finished, for a copy that arrives later (its leader already gone).
_RECENT_ANSWERS = 1024


def _prompt_text(request: EngineRequest) -> str:
    """What the prompt is made of, in the order the model reads it (tools come first in chat templates)."""
    conversation = ENDPOINTS[request.url].conversation(request.body)
    return json.dumps([request.body.get("tools"), conversation], ensure_ascii=False, sort_keys=True)


def prefix_key(request: EngineRequest) -> tuple[int, ...]:
    """Sorts rows so that those sharing their first blocks sit together, deepest shared prefix
    innermost; exact copies end up adjacent (the last element is the whole body's hash)."""
    text = _prompt_text(request)
    blocks = [hash(text[start:start + _BLOCK_CHARS])
              for start in range(0, min(len(text), _BLOCK_CHARS * _MAX_BLOCKS), _BLOCK_CHARS)]
    return (*blocks, hash(json.dumps(request.body, sort_keys=True)))


def prefix_ordered(requests: Iterator[EngineRequest], window: int | None) -> Iterator[EngineRequest]:
    """`requests` in prefix order within windows of `window` rows (None: all at once): memory stays
    bounded by the window however large the file, and a file that fits in one is ordered as a whole."""
    while batch := list(islice(requests, window)):
        yield from sorted(batch, key=prefix_key)


def _deterministic(body: dict, defaults: SamplingDefaults, embeds: bool) -> bool:
    if embeds or body.get("seed") is not None or defaults.seed is not None:
        return True
    temperature = body.get("temperature", defaults.temperature)
    return temperature == 0


def request_key(request: EngineRequest, defaults: SamplingDefaults) -> str | None:
    """What a deterministic request asks, as a digest: requests with the same key get the same answer
    from the same engine. None for a request whose answers may differ (sampled without a seed)."""
    if not _deterministic(request.body, defaults, ENDPOINTS[request.url].embeds):
        return None
    relevant = {name: value for name, value in request.body.items() if name not in _NO_EFFECT}
    return hashlib.blake2b(json.dumps([request.url, relevant], sort_keys=True).encode(), digest_size=16).hexdigest()


class DeduplicatingEngine(StreamingEngine):
    """Generates each deterministic request once per batch, answering its copies from the first; a copy's
    answer is marked `reused="batch_copy"`, so its line says it was not generated on its own."""

    def __init__(self, engine: StreamingEngine, defaults: SamplingDefaults):
        self.engine, self.defaults = engine, defaults
        self.copies_answered = 0

    def stream(self, requests: Iterator[EngineRequest], max_in_flight: int) -> Iterator[EngineResult]:
        waiting: dict[str, list[EngineRequest]] = {}  # copies, by the key of their leader in flight
        leaders: dict[int, str] = {}  # row_index of a leader -> its key
        recent: OrderedDict[str, EngineResult] = OrderedDict()
        answered_late: list[EngineResult] = []

        def fed() -> Iterator[EngineRequest]:
            for request in requests:
                key = request_key(request, self.defaults)
                if key is not None and key in waiting:
                    waiting[key].append(request)
                    continue
                if key is not None and key in recent:
                    answered_late.append(replace(recent[key], request=request, reused="batch_copy"))
                    continue
                if key is not None:
                    waiting[key], leaders[request.row_index] = [], key
                yield request

        for result in self.engine.stream(fed(), max_in_flight):
            yield result
            key = leaders.pop(result.request.row_index, None)
            copies = waiting.pop(key, []) if key is not None else []
            if key is not None:
                recent[key] = result
                if len(recent) > _RECENT_ANSWERS:
                    recent.popitem(last=False)
            for copy in copies:
                self.copies_answered += 1
                yield replace(result, request=copy, reused="batch_copy")
            while answered_late:
                self.copies_answered += 1
                yield answered_late.pop()
        while answered_late:  # copies read after the last leader finished
            self.copies_answered += 1
            yield answered_late.pop()
