"""llama.cpp with an answer's token log-probabilities computed from its own tokens' logits.

llama-cpp-python computes them, when asked, only with ``logits_all`` (it copies every
prompt position's logits, the whole 49,152-token vocabulary of each), by taking the
log-softmax of its whole logits buffer and then sorting the vocabulary in Python for each
answer token. For SmolLM2 that cost 0.1 s per token and 0.5 s per answer on this machine,
five times the generation itself; and ``logits_all`` makes each prompt state saved in a
prompt cache hundreds of megabytes. The values are the ones computed from the logits each
answer token was sampled from, with a partial sort for the top alternatives.

Imported only where the local model runs (llama-cpp-python is the ``local`` extra).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama


class LogprobLlama(Llama):
    """A ``Llama`` that keeps, for its last answer, the tokens it sampled and the logits
    each was sampled from, so that their log-probabilities need neither ``logits_all`` (a
    copy of every prompt position's logits, which also makes each saved prompt state in a
    cache hundreds of megabytes) nor llama-cpp-python's per-token sort."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, logits_all=False, **kwargs)
        # Without logits_all, llama-cpp-python never writes its logits buffer (n_batch rows
        # of the vocabulary, 100 MB here), yet every prompt state it saves for the cache
        # copies the rows up to the prompt's length, and every load scans them: about 100 MB
        # a saved answer, held by the cache beyond the capacity it counts. One row is all
        # that its readers (a stopping criterion's last row) can ask for.
        self.scores = np.zeros((1, self.n_vocab()), dtype=np.single)
        self.sampled: list[int] = []
        self.rows: list[np.ndarray[Any, Any]] = []

    def generate(
        self, tokens: Sequence[int], *args: Any, **kwargs: Any
    ) -> Generator[int, Sequence[int] | None, None]:
        self.sampled, self.rows = [], []
        for token in super().generate(tokens, *args, **kwargs):
            self.sampled.append(token)
            yield token

    def sample(self, *args: Any, **kwargs: Any) -> int:
        idx = kwargs.get("idx")  # generate() passes every argument by name
        at = idx - self.n_tokens if idx is not None else -1
        row = np.ctypeslib.as_array(self._ctx.get_logits_ith(at), shape=(self.n_vocab(),))
        self.rows.append(row.copy())
        return int(super().sample(*args, **kwargs))

    def answered(self) -> int:
        """How many of the tokens sampled so far are the answer's (an end-of-generation
        token, always the last, is not)."""
        done = len(self.sampled)
        if done and llama_cpp.llama_vocab_is_eog(self._model.vocab, self.sampled[-1]):
            done -= 1
        return done

    def chat_logprobs(self, top: int, count: int | None = None) -> dict[str, Any]:
        """The last answer's log-probabilities (its first ``count`` tokens, by default
        all of them) in the chat completion's form."""
        stop = self.answered() if count is None else count
        return {"content": self.entries(0, stop, top), "refusal": None}

    def entries(self, start: int, stop: int, top: int) -> list[dict[str, Any]]:
        """The chat form's entries for the answer's tokens ``start:stop``, as
        llama-cpp-python writes them: each with an alternative list of the ``top`` most
        likely tokens, then the chosen one if it is not among them."""
        stop = min(stop, len(self.sampled), len(self.rows))
        if stop <= start:
            return []
        rows = Llama.logits_to_logprobs(np.stack(self.rows[start:stop]))
        top = max(0, top)
        content = []
        for idx, row in enumerate(rows, start=start):
            token, before = self.sampled[idx], self.sampled[:idx]
            text = self._text([token], before)
            part = (
                np.argpartition(-row, top - 1)[:top]
                if 0 < top < row.size
                else np.arange(min(top, row.size))
            )
            best = sorted(part.tolist(), key=lambda i: (row[i], i), reverse=True)
            alternatives = {self._text([i], before): row[i] for i in best}
            alternatives[text] = row[token]
            content.append(
                {
                    "token": text,
                    "bytes": None,
                    "logprob": row[token],
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": None} for t, lp in alternatives.items()
                    ],
                }
            )
        return content

    def _text(self, tokens: list[int], before: list[int]) -> str:
        return bytes(self.detokenize(tokens, prev_tokens=before)).decode("utf-8", errors="ignore")
