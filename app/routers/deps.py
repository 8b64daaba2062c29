"""Typed dependencies for what the app holds: settings, the LLM client and the turn's store."""

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.llm import LlmClient
from app.stores.base import TurnStore


async def get_settings_dep(request: Request) -> Settings:  # async: no thread-pool hop
    return request.app.state.settings


async def get_llm(request: Request) -> LlmClient:
    return request.app.state.llm


async def get_store(request: Request) -> TurnStore:
    return request.app.state.runtime.store


async def get_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    """For a route that needs a SQLAlchemy session only sometimes (a turn runs on the store)."""
    return request.app.state.sessionmaker


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
LlmDep = Annotated[LlmClient, Depends(get_llm)]
StoreDep = Annotated[TurnStore, Depends(get_store)]
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
