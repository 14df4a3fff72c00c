"""dsv4: DeepSeek-V4 inference from Python.

    import dsv4
    model = dsv4.Model("path/to/checkpoint")            # config.json + safetensors (+ tokenizer.json)
    ctx = model.context(n_ctx=4096)
    for text in ctx.generate("The quick brown fox", max_tokens=32, temperature=0.7, seed=1):
        print(text, end="", flush=True)

Arrays are numpy: logits are float32, shape (vocab,) for one output or (n_tokens, vocab) for all. Model work runs
without the GIL, so threads with separate contexts run in parallel; Ctrl-C cancels a running evaluation or
generation (KeyboardInterrupt). Failures raise dsv4.Error subclasses carrying the library's message and status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import _dsv4
from ._errors import (
    BackendError,
    CancelledError,
    ConfigError,
    ContextFullError,
    Error,
    FormatError,
    InvalidArgumentError,
    InvalidTokenError,
    IOError,
    OutOfMemoryError,
    UnsupportedError,
    VersionError,
    WeightsError,
)

__version__: str = _dsv4.__version__
API_VERSION: int = _dsv4.API_VERSION

__all__ = [
    "API_VERSION", "BackendError", "CancelledError", "ChatEvent", "ChatGeneration", "ConfigError", "Context",
    "ContextFullError", "Error", "FormatError", "Generation", "IOError", "InvalidArgumentError", "InvalidTokenError",
    "Model", "OutOfMemoryError", "Tokenizer", "UnsupportedError", "VersionError", "WeightsError", "build_info",
    "chat_encode", "chat_parse",
]

# The text of the EOS token, which ends a completion of the V4 chat format (spec §12.2).
_EOS_TEXT = "<｜end▁of▁sentence｜>"


def build_info() -> str:
    """Library version, compiler and compute backends of the native layer."""
    return _dsv4.build_info()


def _token_array(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"tokens must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidArgumentError(f"tokens must be integers, got {arr.dtype}")
    if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        raise InvalidTokenError("token id outside int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


# ---- chat format --------------------------------------------------------------------------------------------------
def chat_encode(messages: Sequence[Mapping[str, Any]], *, thinking: bool = False, drop_thinking: bool = True,
                reasoning_effort: str | None = None, add_bos: bool = True) -> str:
    """Renders OpenAI-style messages (roles system, developer, user, assistant, tool, latest_reminder; fields
    tools, response_format, tool_calls, reasoning_content, task, wo_eos, tool_call_id) in the official
    DeepSeek-V4 prompt format. The prompt ends where the assistant's reply begins: in ``</think>`` (chat mode)
    or ``<think>`` (thinking mode). ``reasoning_effort``: None, "high" or "max"."""
    return _dsv4.chat_encode(json.dumps(list(messages), ensure_ascii=False), thinking, drop_thinking,
                             reasoning_effort, add_bos)


def chat_parse(completion: str, *, thinking: bool = False) -> dict[str, Any]:
    """Parses a completion (the generated text, ending in the EOS token's text) into an assistant message:
    ``{"role", "content", "reasoning_content", "tool_calls"}``. ``thinking``: the prompt opened ``<think>``."""
    return json.loads(_dsv4.chat_parse(completion, thinking))


# ---- tokenizer ----------------------------------------------------------------------------------------------------
class Tokenizer:
    """A Hugging Face ``tokenizer.json`` of DeepSeek-V4's kind (byte-level BPE). Thread-safe; encoding runs
    without the GIL."""

    def __init__(self, path: str):
        """Loads ``path`` (a tokenizer.json)."""
        self._native = _dsv4.Tokenizer(str(path))

    @classmethod
    def _wrap(cls, native: Any) -> "Tokenizer":
        t = cls.__new__(cls)
        t._native = native
        return t

    @property
    def vocab_size(self) -> int:
        """Number of token ids (model vocabulary plus added tokens)."""
        return self._native.vocab_size

    def encode(self, text: str) -> list[int]:
        """Text → token ids (no BOS/EOS added; special-token text is recognised as Hugging Face does)."""
        return self._native.encode(text)

    def encode_batch(self, texts: Iterable[str], n_threads: int = 0) -> list[list[int]]:
        """encode() of every text, over ``n_threads`` native threads (0 = all cores)."""
        return self._native.encode_batch(list(texts), n_threads)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = False) -> str:
        """Token ids → text; invalid UTF-8 from byte tokens becomes U+FFFD."""
        return self._native.decode(_token_array(ids), skip_special)

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes one token contributes to a decode (possibly part of a UTF-8 character)."""
        return self._native.token_bytes(token)

    def is_special(self, token: int) -> bool:
        """True for added tokens marked special."""
        return self._native.is_special(token)

    def apply_chat(self, messages: Sequence[Mapping[str, Any]], **chat_options: Any) -> list[int]:
        """The token ids of chat_encode(messages, **chat_options)."""
        return self.encode(chat_encode(messages, **chat_options))


# ---- model --------------------------------------------------------------------------------------------------------
class Model:
    """A DeepSeek-V4 checkpoint directory as published: config.json, safetensors shards (with
    model.safetensors.index.json), and tokenizer.json when present. Immutable and thread-safe once loaded."""

    def __init__(self, path: str, *, use_mmap: bool = True, check_tensors: bool = True, repack_weights: bool = True,
                 progress: Callable[[int, int], bool | None] | None = None, device: str = "cpu"):
        """Loads ``path``. ``progress(done_bytes, total_bytes)`` is called while loading; returning False
        cancels. ``repack_weights`` copies the FP4/FP8 matrices into the CPU kernels' packed layout where the CPU
        has AVX512-BF16 (dsv4_model_params.repack_weights). ``device`` is "cpu", "cuda" or "cuda:N"
        (dsv4_model_params.device; a build with CUDA). Raises IOError, FormatError, ConfigError, WeightsError or
        BackendError naming what is wrong."""
        self._native = _dsv4.Model(str(path), use_mmap, check_tensors, repack_weights, progress, device)
        native_tok = self._native.tokenizer()
        self._tokenizer = Tokenizer._wrap(native_tok) if native_tok is not None else None
        self._info = self._native.info()

    @property
    def info(self) -> dict[str, Any]:
        """Architecture summary: dims, layer counts by kind, experts, context length, parameter count."""
        return dict(self._info)

    @property
    def vocab_size(self) -> int:
        return self._info["vocab_size"]

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The checkpoint's tokenizer.json, or None if the directory has none."""
        return self._tokenizer

    def layer_info(self, layer: int) -> dict[str, Any]:
        """Kind ("window", "csa", "hca"), compress ratio, routing and RoPE of one layer (MTP blocks last)."""
        return self._native.layer_info(layer)

    def context(self, **options: Any) -> "Context":
        """A new Context on this model (options as Context)."""
        return Context(self, **options)


# ---- generation ---------------------------------------------------------------------------------------------------
def _sampler_options(temperature: float, top_k: int, top_p: float, min_p: float, repetition_penalty: float,
                     presence_penalty: float, frequency_penalty: float, penalty_last_n: int,
                     logit_bias: Mapping[int, float] | None, seed: int) -> Any:
    o = _dsv4.SamplerOptions()
    o.temperature = temperature
    o.top_k = top_k
    o.top_p = top_p
    o.min_p = min_p
    o.repetition_penalty = repetition_penalty
    o.presence_penalty = presence_penalty
    o.frequency_penalty = frequency_penalty
    o.penalty_last_n = penalty_last_n
    o.seed = seed
    o.logit_bias = [(int(k), float(v)) for k, v in (logit_bias or {}).items()]
    return o


class Generation:
    """A streaming generation: iterate to receive text pieces (whole UTF-8 characters; text that might begin a
    stop string is held back). ``tokens`` and ``text`` accumulate; ``stats`` has the timings and stop reason.
    Leaving the loop early (break, exception, Ctrl-C) leaves the sequence with what was evaluated."""

    def __init__(self, ctx: "Context", native: Any, prompt: list[int], seq: int):
        self._ctx, self._native, self._prompt, self._seq = ctx, native, prompt, seq
        self.tokens: list[int] = []
        self.text = ""
        self._done = False

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        while not self._done:
            piece = ""
            try:
                token, piece = self._native.next()
            except StopIteration:
                self._done = True
            except BaseException:
                self._ctx._note_tokens(self._seq, self._prompt + self.tokens)
                raise
            else:
                if token >= 0:
                    self.tokens.append(token)
                self.text += piece
            self._ctx._note_tokens(self._seq, self._prompt + self.tokens)
            if piece:
                return piece
        raise StopIteration

    def run(self) -> str:
        """Runs to the end; returns the whole text."""
        for _ in self:
            pass
        return self.text

    @property
    def stats(self) -> dict[str, Any]:
        """n_prompt (tokens evaluated for this call), n_generated, prefill/decode seconds and tokens/s,
        time_to_first_token_seconds, stop_reason ("eos", "stop_token", "stop_string", "max_tokens",
        "cancelled")."""
        return self._native.stats()


@dataclass(frozen=True)
class ChatEvent:
    """One event of a streamed chat reply: ``kind`` is "reasoning" or "content" (``text`` is a delta), or
    "tool_call" (``tool_call`` is the parsed call ``{"type": "function", "function": {"name", "arguments"}}``,
    ``text`` its JSON)."""

    kind: str
    text: str
    tool_call: dict[str, Any] | None = None


class ChatGeneration:
    """A streaming chat reply: iterate to receive ChatEvents (reasoning and content deltas, tool calls when
    complete; DSML markup never reaches content). When done, ``message`` is the assistant message to append to
    the conversation. A completion the parser rejects is streamed raw as content (``parse_error`` says why)."""

    def __init__(self, generation: Generation, thinking: bool):
        self._generation = generation
        self._thinking = thinking
        self._stream: Any = _dsv4.ChatStream(thinking)
        self._pending: list[ChatEvent] = []
        self._finished = False
        self.parse_error: str | None = None
        self.message: dict[str, Any] | None = None

    def __iter__(self) -> "ChatGeneration":
        return self

    def _feed(self, text: str, final: bool = False) -> None:
        if self._stream is None:
            if text:
                self._pending.append(ChatEvent("content", text))
            return
        try:
            events = self._stream.push(text) if text else []
            if final:
                events += self._stream.finish()
        except InvalidArgumentError as e:
            self.parse_error = str(e)
            self._stream = None
            if text:
                self._pending.append(ChatEvent("content", text))
            return
        for kind, payload in events:
            call = json.loads(payload) if kind == "tool_call" else None
            self._pending.append(ChatEvent(kind, payload, call))

    def __next__(self) -> ChatEvent:
        while not self._pending:
            if self._finished:
                raise StopIteration
            try:
                self._feed(next(self._generation))
            except StopIteration:
                self._finished = True
                completion = self._generation.text
                eos = self.stats["stop_reason"] == "eos"
                self._feed(_EOS_TEXT if eos else "", final=eos)
                if eos and self.parse_error is None:
                    self.message = chat_parse(completion + _EOS_TEXT, thinking=self._thinking)
                else:
                    self.message = {"role": "assistant", "content": completion}
        return self._pending.pop(0)

    def run(self) -> dict[str, Any]:
        """Runs to the end; returns the assistant message."""
        for _ in self:
            pass
        assert self.message is not None
        return self.message

    @property
    def text(self) -> str:
        """The raw completion so far."""
        return self._generation.text

    @property
    def stats(self) -> dict[str, Any]:
        return self._generation.stats


# ---- context ------------------------------------------------------------------------------------------------------
class Context:
    """KV caches of up to ``n_seq_max`` sequences on one model, and the outputs of the last evaluation. Calls
    from several threads are serialised (one mutex per context); use one context per thread for parallelism."""

    def __init__(self, model: Model, *, n_ctx: int | None = None, n_seq_max: int | None = None,
                 n_threads: int | None = None, n_rewind: int | None = None, tokenizer: Tokenizer | None = None):
        """``n_ctx``: positions per sequence (0 = the model's maximum); ``n_threads``: compute threads (0 =
        OMP_NUM_THREADS, else all cores); ``n_rewind``: positions truncate() can go back; ``tokenizer``: for
        text prompts (default: the model's). An option left None takes the library's default
        (dsv4_context_params_init: n_ctx 4096, n_seq_max 1, n_threads 0, n_rewind 32)."""
        self.model = model
        self.tokenizer = tokenizer or model.tokenizer
        given = {"n_ctx": n_ctx, "n_seq_max": n_seq_max, "n_threads": n_threads, "n_rewind": n_rewind}
        options = {k: (v if v is not None else _dsv4.context_defaults()[k]) for k, v in given.items()}
        self._native = _dsv4.Context(model._native, options["n_ctx"], options["n_seq_max"], options["n_threads"],
                                     options["n_rewind"])
        self._tokens: dict[int, list[int] | None] = {}  # what each sequence holds, when known

    def _note_tokens(self, seq: int, tokens: list[int]) -> None:
        self._tokens[seq] = tokens[: self.seq_length(seq)]

    def eval(self, tokens: Sequence[int] | np.ndarray, *, seq: int = 0, all_logits: bool = False) -> np.ndarray:
        """Appends tokens to sequence ``seq`` and evaluates them. Returns float32 logits: shape (vocab,) for the
        last token, or (len(tokens), vocab) with ``all_logits`` (for scoring). Transactional: on error the
        sequence is unchanged."""
        arr = _token_array(tokens)
        if arr.size == 0:
            raise InvalidArgumentError("eval: no tokens")
        before = self._tokens.get(seq, [] if self.seq_length(seq) == 0 else None)
        out = self._native.eval(arr, seq, all_logits)
        self._tokens[seq] = None if before is None else before + arr.tolist()
        return out

    def logits(self, i: int = -1) -> np.ndarray:
        """float32 logits (vocab,) of output ``i`` of the last evaluation (-1 = last)."""
        return self._native.logits(i)

    def seq_length(self, seq: int = 0) -> int:
        """Positions sequence ``seq`` holds."""
        return self._native.seq_length(seq)

    def tokens(self, seq: int = 0) -> list[int] | None:
        """The tokens sequence ``seq`` holds, if known (unknown after load_state)."""
        known = self._tokens.get(seq, [] if self.seq_length(seq) == 0 else None)
        return None if known is None else list(known)

    def truncate(self, n: int, *, seq: int = 0) -> None:
        """Keeps the first ``n`` positions of ``seq`` (at most n_rewind back from its longest length, or 0)."""
        self._native.truncate(seq, n)
        known = self._tokens.get(seq)
        self._tokens[seq] = None if known is None else known[:n]

    def fork(self, src: int, dst: int) -> None:
        """Makes ``dst`` a copy-on-write copy of ``src``."""
        self._native.fork(src, dst)
        known = self.tokens(src)
        self._tokens[dst] = known

    def memory_stats(self) -> dict[str, int]:
        """Cache bytes now, exact growth per token by layer kind, constant bytes per sequence."""
        return self._native.memory_stats()

    def save_state(self, seq: int = 0) -> bytes:
        """The state of ``seq`` as bytes (magic, version, model fingerprint, caches)."""
        return self._native.save_state(seq)

    def load_state(self, blob: bytes, seq: int = 0) -> None:
        """Replaces ``seq`` with a saved state (VersionError for another model or version)."""
        self._native.load_state(blob, seq)
        self._tokens[seq] = None

    def save_state_file(self, path: str, seq: int = 0) -> None:
        self._native.save_state_file(seq, str(path))

    def load_state_file(self, path: str, seq: int = 0) -> None:
        self._native.load_state_file(seq, str(path))
        self._tokens[seq] = None

    def abort(self) -> None:
        """Cancels the evaluation or generation running on this context (any thread)."""
        self._native.abort()

    def _prepare(self, prompt: str | Sequence[int] | np.ndarray, seq: int) -> list[int]:
        """Token ids of prompt; the sequence keeps the longest cached prefix of them and returns the rest."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidArgumentError("a text prompt needs a tokenizer (tokenizer.json or Context(tokenizer=))")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = _token_array(prompt).tolist()
        if not ids:
            raise InvalidArgumentError("empty prompt")
        cached = self.tokens(seq) or []
        common = 0
        while common < min(len(cached), len(ids) - 1) and cached[common] == ids[common]:
            common += 1
        if self.seq_length(seq) != common:
            try:
                self.truncate(common, seq=seq)
            except UnsupportedError:  # further back than n_rewind: start over
                common = 0
                self.truncate(0, seq=seq)
        return ids

    def generate(self, prompt: str | Sequence[int] | np.ndarray, *, seq: int = 0, max_tokens: int = 256,
                 stop: Sequence[str] = (), stop_tokens: Sequence[int] = (), ignore_eos: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 penalty_last_n: int = 64, logit_bias: Mapping[int, float] | None = None,
                 seed: int = 0) -> Generation:
        """Streams a continuation of ``prompt`` (text, tokenized without BOS, or token ids) on sequence ``seq``.
        The prompt is the sequence's whole content: a prefix it shares with what the sequence holds is reused,
        the rest evaluated. Sampling: temperature 0 is greedy; the same seed reproduces a run exactly.
        Ends at EOS (unless ignore_eos), a stop token or string, or max_tokens."""
        ids = self._prepare(prompt, seq)
        common = self.seq_length(seq)
        sampling = _sampler_options(temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty,
                                    frequency_penalty, penalty_last_n, logit_bias, seed)
        native = _dsv4.Generation(self._native, self.tokenizer._native if self.tokenizer else None,
                                  np.asarray(ids[common:], dtype=np.int32), seq, sampling, max_tokens, list(stop),
                                  [int(t) for t in stop_tokens], ignore_eos)
        return Generation(self, native, ids, seq)

    def chat(self, messages: Sequence[Mapping[str, Any]], *, thinking: bool = False,
             reasoning_effort: str | None = None, drop_thinking: bool = True, seq: int = 0,
             **generate_options: Any) -> ChatGeneration:
        """Streams the assistant's reply to OpenAI-style ``messages`` (with tools on a system message, tool
        results as role "tool") as ChatEvents. The cached conversation prefix is reused between turns; append
        ``reply.message`` to the messages for the next turn. Options as generate()."""
        prompt = chat_encode(messages, thinking=thinking, drop_thinking=drop_thinking,
                             reasoning_effort=reasoning_effort)
        return ChatGeneration(self.generate(prompt, seq=seq, **generate_options), thinking)
