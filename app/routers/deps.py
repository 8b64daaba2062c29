"""Typed dependencies for what the app holds: settings and the LLM client."""

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.llm import LlmClient


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_llm(request: Request) -> LlmClient:
    return request.app.state.llm


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
LlmDep = Annotated[LlmClient, Depends(get_llm)]
