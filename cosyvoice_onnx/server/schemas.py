"""The HTTP request and response shapes, checked once at the edge by pydantic, and OpenAI's error shape."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..request import MAX_FIRST_CHUNK_TOKENS, MAX_INSTRUCTION_CHARS, MAX_SEED, MAX_TEXT_CHARS

FORMATS = ("wav", "pcm", "flac", "mp3", "opus", "aac")
# OpenAI's own model names are accepted as aliases of the one model this server holds, so clients written for
# OpenAI work unchanged; any other name is refused (404) rather than silently served by a different model.
OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


class SpeechRequest(BaseModel):
    """`POST /v1/audio/speech`: OpenAI's fields plus this engine's extensions (instructions, seed, duration,
    stream, first_chunk_tokens, max_len, max_seconds). Unknown fields are refused so a typo does not pass unnoticed."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    input: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    voice: str = Field(min_length=1, max_length=64)
    response_format: Literal[FORMATS] = "wav"
    speed: float = Field(1.0, allow_inf_nan=False)
    instructions: str | None = Field(None, max_length=MAX_INSTRUCTION_CHARS)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    duration: float | None = Field(None, gt=0, le=600, allow_inf_nan=False)
    stream: bool = False
    first_chunk_tokens: int | None = Field(None, ge=1, le=MAX_FIRST_CHUNK_TOKENS)
    max_len: int | None = Field(None, ge=1, le=10000)
    max_seconds: float | None = Field(None, gt=0, allow_inf_nan=False)


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None


def error_json(message: str, kind: str, code: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "code"}}."""
    return {"error": ErrorBody(message=message, type=kind, code=code).model_dump()}
