"""Typed dependencies for what the app holds: settings and the LLM client."""

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.llm import LlmClient


async def get_settings_dep(request: Request) -> Settings:  # async: no thread-pool hop
    return request.app.state.settings


async def get_llm(request: Request) -> LlmClient:
    return request.app.state.llm


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
LlmDep = Annotated[LlmClient, Depends(get_llm)]
