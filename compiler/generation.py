"""Text generation with a compiled decoder: a prefill, then one call per token with the KV cache kept in the runtime.

A decoder exported with past key/values (Optimum, torch.onnx from transformers) takes
`input_ids` (and `attention_mask`, `position_ids` where it has them) plus one
`past_key_values.{i}.key` / `.value` per layer, and returns `logits` plus the matching
`present.{i}.key` / `.value`: the cache grown by the new tokens. `Decoder` reads that
signature from the artifact's manifest and runs the loop: the prefill takes the prompt with
an empty cache (length 0), every decode step takes the last token and the previous
step's present tensors as its past. The cache never leaves the runtime: the present
tensors go back in as the VM's own tensors (`resident` calls), and only the last row of
the logits is read out. The model itself still concatenates past and new keys each step
(what the exported graph says); an in-place cache is an IR rewrite of that Concat.

Greedy decoding takes the argmax; sampling draws from the softmax of logits / temperature,
over the top-k where given, with a seeded generator, so a run is reproducible.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import MdocError

_PAST = re.compile(r"^past(?:_key_values)?[._](\d+)[._](key|value)$")


@dataclass(frozen=True)
class Signature:
    """Where a decoder's inputs and outputs are in its manifest."""

    ids: str
    mask: str | None
    positions: str | None
    past: tuple[str, ...]           # past inputs, layer by layer (key, value)
    present: tuple[int, ...]        # the output index of each past input's present tensor
    logits: int                     # output index
    cache_shape: tuple              # a past input's shape with the batch 1 and the length 0
    cache_dtype: str

    @classmethod
    def of(cls, manifest: dict, where: str) -> "Signature":
        inputs = {i["name"]: i for i in manifest["inputs"]}
        outputs = [o["name"] for o in manifest["outputs"]]
        if "input_ids" not in inputs:
            raise MdocError(f"{where}: not a decoder: no input 'input_ids' (inputs: {', '.join(inputs)})")
        past = sorted((n for n in inputs if _PAST.match(n)),
                      key=lambda n: (int(_PAST.match(n)[1]), _PAST.match(n)[2]))
        if not past:
            raise MdocError(f"{where}: no past key/value inputs (past_key_values.N.key): export the decoder "
                            "with its cache (Optimum's 'text-generation-with-past', or use_cache=True)")
        present = []
        for name in past:
            layer, kind = _PAST.match(name).groups()
            found = [k for k, o in enumerate(outputs) if re.fullmatch(rf"present[._]{layer}[._]{kind}", o)]
            if not found:
                raise MdocError(f"{where}: past input '{name}' has no output present.{layer}.{kind}")
            present.append(found[0])
        logits = outputs.index("logits") if "logits" in outputs else 0
        shape = inputs[past[0]]["shape"]
        length = _length_axis(shape, inputs["input_ids"]["shape"][0], f"{where}: input '{past[0]}'")
        cache_shape = tuple(1 if k == 0 else 0 if k == length else d for k, d in enumerate(shape))
        return cls("input_ids", "attention_mask" if "attention_mask" in inputs else None,
                   "position_ids" if "position_ids" in inputs else None, tuple(past), tuple(present), logits,
                   cache_shape, inputs[past[0]]["dtype"])


def _length_axis(shape: list, batch, where: str) -> int:
    """The cache's length axis: the symbolic dim that is not the batch (e.g. [N, heads, P, head_dim])."""
    axes = [k for k, d in enumerate(shape) if not isinstance(d, int) and k != 0 and d != batch]
    if len(axes) != 1 or any(not isinstance(d, int) for k, d in enumerate(shape) if k not in (0, axes[0])):
        raise MdocError(f"{where}: cannot tell the cache's length axis in shape {shape} (want one symbolic dim "
                        "besides the batch, e.g. [batch, heads, past_length, head_dim])")
    return axes[0]


def step_feeds(sig: Signature, ids: np.ndarray, past_length: int, cache: dict) -> dict:
    """One call's inputs: the new tokens after `past_length` cached ones, the cache, and the mask and
    positions where the decoder takes them (also what a reference loop on onnxruntime feeds)."""
    feeds = {sig.ids: ids, **cache}
    total = past_length + ids.shape[1]
    if sig.mask:
        feeds[sig.mask] = np.ones((1, total), np.int64)
    if sig.positions:
        feeds[sig.positions] = np.arange(past_length, total, dtype=np.int64)[None]
    return feeds


@dataclass
class Generated:
    tokens: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    steps: list[float] = field(default_factory=list)  # seconds per decode step

    def stats(self) -> dict:
        decoded = len(self.tokens) - 1  # the first new token comes out of the prefill
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": len(self.tokens),
                "prefill_ms": self.prefill_s * 1e3, "prefill_tokens_per_s": self.prompt_tokens / self.prefill_s,
                "decode_ms": self.decode_s * 1e3,
                "decode_tokens_per_s": decoded / self.decode_s if decoded and self.decode_s else None}


class Decoder:
    """A loaded decoder artifact (`runner`: what `backends.load_artifact` returns, with `resident`)."""

    def __init__(self, runner, where: str = "artifact"):
        if not hasattr(runner, "resident"):
            raise MdocError(f"{where}: this artifact's runner cannot keep a cache in the runtime (run it on its "
                            "own device, not under emulation)")
        self.runner, self.where = runner, where
        self.sig = Signature.of(runner.manifest, where)

    def generate(self, prompt: list[int], max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
                 seed: int = 0, eos: int | None = None) -> Generated:
        if not prompt:
            raise MdocError(f"{self.where}: the prompt has no tokens")
        if max_new_tokens < 1:
            raise MdocError(f"{self.where}: --max-new-tokens must be at least 1, got {max_new_tokens}")
        rng = np.random.default_rng(seed)
        sig, run = self.sig, self.runner
        cache = {name: run.empty(sig.cache_shape, sig.cache_dtype) for name in sig.past}
        ids = np.asarray([prompt], np.int64)
        start = time.perf_counter()
        outs = run.resident(step_feeds(self.sig, ids, 0, cache))
        token = self._pick(outs, temperature, top_k, rng)
        prefill = time.perf_counter() - start
        tokens, steps, seen = [token], [], len(prompt)
        while len(tokens) < max_new_tokens and token != eos:
            cache = {name: outs[k] for name, k in zip(sig.past, sig.present)}
            t = time.perf_counter()
            outs = run.resident(step_feeds(self.sig, np.asarray([[token]], np.int64), seen, cache))
            token = self._pick(outs, temperature, top_k, rng)
            steps.append(time.perf_counter() - t)
            tokens.append(token)
            seen += 1
        return Generated(tokens, len(prompt), prefill, sum(steps), steps)

    def _pick(self, outs: list, temperature: float, top_k: int, rng: np.random.Generator) -> int:
        logits = self.runner.to_numpy(outs[self.sig.logits])[0, -1].astype(np.float64)
        if temperature <= 0:
            return int(np.argmax(logits))
        logits = logits / temperature
        if 0 < top_k < logits.size:
            logits[logits < np.partition(logits, -top_k)[-top_k]] = -np.inf
        p = np.exp(logits - logits.max())
        return int(rng.choice(logits.size, p=p / p.sum()))
