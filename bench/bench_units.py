"""What the building blocks of a turn cost the bot in CPU: one Bot API call, one database
transaction, one provider call, measured one at a time in this process (the fakes run in others).

A voice-note turn is made of a fixed number of them (eight Bot API calls, six transactions,
three provider calls), so their sum is a floor under the bot's CPU per turn, and
``1000 / floor`` a ceiling on turns per second per core whatever the glue code does. Bot API
calls are measured with PTB's stock HTTPXRequest and with the adapter's AiohttpRequest.

    .venv/bin/python bench/bench_units.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from telegram import Bot, ReplyParameters  # noqa: E402
from telegram.request import HTTPXRequest  # noqa: E402

from adapters.telegram_client import TelegramClient  # noqa: E402
from adapters.telegram_http import AiohttpRequest  # noqa: E402
from bench.harness import REPLY, ROOT, Latencies, LoadWatch, ProviderFakes, machine  # noqa: E402
from bench.report import print_table, write_result  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.messages import Audio  # noqa: E402
from bot.providers.elevenlabs_cloud import ElevenLabsTTS  # noqa: E402
from bot.providers.groq_cloud import GroqWhisperSTT  # noqa: E402
from bot.providers.registry import build_llm  # noqa: E402
from bot.text import to_spoken_text  # noqa: E402
from storage.store import HistoryStore, TurnState  # noqa: E402

async def cpu_ms(rounds: int, op: Callable[[], Awaitable[object]]) -> float:
    for _ in range(max(5, rounds // 10)):
        await op()
    start = time.process_time()
    for _ in range(rounds):
        await op()
    return (time.process_time() - start) * 1000 / rounds


async def telegram_costs(rounds: int, info: dict) -> dict[str, dict[str, float]]:
    """Bot API calls as a turn makes them (the answer replies to the user's message, so
    Telegram's answer nests that message): with stock PTB, with PTB on the adapter's aiohttp
    request, and as the adapter sends them (``TelegramClient``: answers not made into objects)."""
    costs: dict[str, dict[str, float]] = {}
    voice = b"OggS" + bytes(55_000)
    chat, asked = info["chat"], info["message_id"]
    clients = (
        ("httpx, PTB objects (PTB default)", Bot, HTTPXRequest()),
        ("aiohttp, PTB objects", Bot, AiohttpRequest()),
        ("aiohttp, answers unread (adapter)", TelegramClient, AiohttpRequest()),
    )
    for name, kind, request in clients:
        bot = kind(info["token"], base_url=info["api"], base_file_url=info["files"], request=request)
        await bot.initialize()

        async def download() -> None:
            file = await bot.get_file(info["file_id"])
            await file.download_as_bytearray()

        if isinstance(bot, TelegramClient):
            client, to = bot, {"message_id": asked, "allow_sending_without_reply": True}
            send_message = lambda: client.send_text(chat, REPLY, reply_parameters=to)  # noqa: E731
            send_voice = lambda: client.send_upload(  # noqa: E731
                "sendVoice", "voice", chat, voice, "reply.ogg", duration=7, reply_parameters=to, timeout=60)
        else:
            plain, answering = bot, ReplyParameters(asked, allow_sending_without_reply=True)
            send_message = lambda: plain.send_message(chat, REPLY, reply_parameters=answering)  # noqa: E731
            send_voice = lambda: plain.send_voice(  # noqa: E731
                chat, voice, duration=7, filename="reply.ogg", reply_parameters=answering)
        costs[name] = {
            "sendChatAction": await cpu_ms(rounds, lambda: bot.send_chat_action(chat, "typing")),
            "sendMessage": await cpu_ms(rounds, send_message),
            "getFile + download": await cpu_ms(rounds, download),
            "sendVoice (55 kB)": await cpu_ms(rounds // 2, send_voice),
        }
        await bot.shutdown()
    return costs


async def update_json_costs(rounds: int, info: dict) -> dict[str, float]:
    """The inbox keeps each update's JSON: PTB's ``to_json`` of the parsed update, or the JSON
    Telegram sent (what ``TelegramClient.updates_with_json`` keeps)."""
    client = TelegramClient(info["token"], base_url=info["api"], base_file_url=info["files"], request=AiohttpRequest())
    await client.initialize()
    [(update, payload)] = await client.updates_with_json(offset=None, timeout=0, allowed_updates=["message"], limit=1)
    await client.shutdown()
    raw = json.loads(payload)

    async def ptb() -> None:
        update.to_json()

    async def as_sent() -> None:
        json.dumps(raw, separators=(",", ":"))

    return {"PTB to_json": await cpu_ms(rounds, ptb), "as Telegram sent it": await cpu_ms(rounds, as_sent)}


async def db_costs(rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        store = HistoryStore.from_url(f"sqlite+aiosqlite:///{folder}/units.db")
        await store.migrate()
        chat = await store.chat_id("telegram", "1")
        counter = iter(range(10**9))
        for i in range(60):  # a chat with some history
            record = await store.begin_turn(chat, f"h{i}", "u")
            await store.add_message(chat, "user" if i % 2 == 0 else "assistant", REPLY, turn_id=record.id)
        turn = [0]

        async def begin() -> None:
            record, _, _ = await store.open_turn(chat, str(next(counter)), "u", recent=200)
            turn[0] = record.id

        costs = {
            "inbox put": await cpu_ms(rounds, lambda: store.inbox_put("telegram", [(str(next(counter)), "{}")])),
            "ledger + settings + history": await cpu_ms(rounds, begin),
            "add message": await cpu_ms(rounds, lambda: store.add_message(chat, "user", "hello", turn_id=turn[0])),
            "reply + state": await cpu_ms(rounds, lambda: store.add_message(
                chat, "assistant", REPLY, turn_id=turn[0], turn_state=TurnState.REPLIED)),
            "finish turn": await cpu_ms(rounds, lambda: store.finish_turn(turn[0], "telegram", "u", tokens=5)),
            "inbox done": await cpu_ms(rounds, lambda: store.inbox_done("telegram", "1")),
        }
        await store.aclose()
    return costs


async def provider_costs(
    rounds: int, providers: ProviderFakes, note: bytes
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Each provider call through the bot's provider classes; and what the client libraries add
    over the HTTP they send: the same requests (same body, same answer) made with plain aiohttp,
    and the LangChain prompt a turn builds from a 200-message history."""
    import aiohttp

    from bot.context import build_messages
    from storage.store import StoredMessage

    settings = Settings(_env_file=None, groq_api_key="gsk_bench", groq_base_url=providers.urls["groq"],
                        elevenlabs_api_key="el_bench", elevenlabs_base_url=providers.urls["elevenlabs"])
    closers: list = []
    llm = build_llm("groq", settings, closers)
    stt, tts = GroqWhisperSTT(settings), ElevenLabsTTS(settings)
    history = [SystemMessage("You are Voicebot, a friendly voice assistant.")]
    history += [HumanMessage(REPLY) if i % 2 == 0 else AIMessage(REPLY) for i in range(40)] + [HumanMessage("q")]

    async def stream() -> None:
        async for _ in llm.astream(history):
            pass

    spoken = to_spoken_text(REPLY, 1500)
    costs = {
        "Groq Whisper call": await cpu_ms(rounds, lambda: stt.transcribe(Audio(data=note))),
        "Groq chat stream (20 tokens)": await cpu_ms(rounds, stream),
        "ElevenLabs call": await cpu_ms(rounds, lambda: tts.synthesize(spoken)),
    }

    roles = {"system": "system", "human": "user", "ai": "assistant"}
    body = {"model": settings.llm_model, "stream": False,
            "messages": [{"role": roles[m.type], "content": m.content} for m in history]}
    groq_url = f"{providers.urls['groq']}/openai/v1"
    eleven_url = (f"{providers.urls['elevenlabs']}/v1/text-to-speech/{settings.elevenlabs_voice_id}"
                  f"?output_format={settings.elevenlabs_output_format}")
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer gsk_bench"}) as http:

        async def plain_whisper() -> None:
            form = aiohttp.FormData()
            form.add_field("model", settings.stt_model)
            form.add_field("response_format", "verbose_json")
            form.add_field("temperature", "0.0")
            form.add_field("file", note, filename="voice.ogg", content_type="audio/ogg")
            async with http.post(f"{groq_url}/audio/transcriptions", data=form) as response:
                response.raise_for_status()
                assert (await response.json())["text"]

        async def plain_chat() -> None:
            async with http.post(f"{groq_url}/chat/completions", json=body) as response:
                response.raise_for_status()
                assert (await response.json())["choices"][0]["message"]["content"] == REPLY

        async def plain_tts() -> None:
            async with http.post(eleven_url, json={"text": spoken, "model_id": settings.elevenlabs_model_id},
                                 headers={"xi-api-key": "el_bench"}) as response:
                response.raise_for_status()
                assert (await response.read()).startswith(b"OggS")

        libraries = {
            "Groq Whisper": {"library": costs["Groq Whisper call"],
                             "plain aiohttp": await cpu_ms(rounds, plain_whisper)},
            "Groq chat, 41 messages, one answer": {"library": await cpu_ms(rounds, lambda: llm.ainvoke(history)),
                                                   "plain aiohttp": await cpu_ms(rounds, plain_chat)},
            "ElevenLabs": {"library": costs["ElevenLabs call"], "plain aiohttp": await cpu_ms(rounds, plain_tts)},
        }
    stored = [StoredMessage("user" if i % 2 == 0 else "assistant", REPLY, 30) for i in range(200)]

    async def prompt() -> None:
        build_messages("You are Voicebot, a friendly voice assistant.", stored, "q", budget=6000)

    libraries["LangChain prompt, 200-message history"] = {"library": await cpu_ms(rounds, prompt)}
    await stt.aclose()
    await tts.aclose()
    for close in closers:
        await close()
    return costs, libraries


async def run(rounds: int) -> dict:
    from tests.fakes import audio_samples

    watch = LoadWatch()
    server = subprocess.Popen([sys.executable, "-m", "bench.harness", "telegram"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        telegram = await telegram_costs(rounds, info)
        update_json = await update_json_costs(rounds, info)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
    db = await db_costs(rounds)
    with ProviderFakes(Latencies.zero()) as providers:
        note = audio_samples.beeps_ogg(3.0, seed=5)
        provider, libraries = await provider_costs(rounds // 2, providers, note)
    floors = {}
    for name, calls in telegram.items():
        api = (calls["sendChatAction"] * 3 + calls["sendMessage"] * 3 + calls["getFile + download"]
               + calls["sendVoice (55 kB)"])
        floors[name] = round(api + sum(db.values()) + sum(provider.values()), 2)
    sdk_tax = sum(pair["library"] - pair["plain aiohttp"] for pair in libraries.values() if "plain aiohttp" in pair)
    return {"rounds": rounds, "host": machine(), **watch.result(), "telegram_cpu_ms": telegram,
            "sdk_over_plain_http_cpu_ms": round(sdk_tax, 2),
            "db_cpu_ms": db, "provider_cpu_ms": provider, "library_cpu_ms": libraries,
            "update_json_cpu_ms": update_json,
            "voice_turn_floor_cpu_ms": floors}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.rounds))
    write_result("units", result)
    rows = []
    for client, calls in result["telegram_cpu_ms"].items():
        rows.append((f"Bot API, {client}", "  ".join(f"{k} {v:.2f}" for k, v in calls.items())))
    rows.append(("an update's JSON for the inbox", "  ".join(f"{k} {v:.3f}" for k, v in result["update_json_cpu_ms"].items())))
    rows.append(("DB transaction (SQLite)", "  ".join(f"{k} {v:.2f}" for k, v in result["db_cpu_ms"].items())))
    rows.append(("providers", "  ".join(f"{k} {v:.2f}" for k, v in result["provider_cpu_ms"].items())))
    for call, pair in result["library_cpu_ms"].items():
        rows.append((f"{call}", "  ".join(f"{k} {v:.2f}" for k, v in pair.items())))
    for client, floor in result["voice_turn_floor_cpu_ms"].items():
        rows.append((f"voice turn floor, {client}", f"{floor:.1f} ms CPU -> at most {1000 / floor:.0f} turns/s per core"))
    print_table(f"CPU ms per building block, client side (load {result['load_start']})", rows)
    return result


if __name__ == "__main__":
    main()
