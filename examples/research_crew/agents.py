"""Simulated agents (no LLM): a researcher, a writer and a reviewer, each a consumer group
of command handlers. The writer fails on questions that ask it to (the injected fault)."""

from __future__ import annotations

import asyncio
from typing import Any

from workflow import RESEARCHER, REVIEWER, WRITER

from agentcast.client import Client
from agentcast.orchestration.agent import AgentWorker, CommandFailed
from agentcast.protocol.envelope import Envelope

WORK_SECONDS = 0.05  # the simulated thinking time of every command


async def search(args: Any, command: Envelope) -> Any:
    await asyncio.sleep(WORK_SECONDS)
    return {"sources": [f"paper on {args['question']} #{n}" for n in (1, 2, 3)]}


async def discard_notes(args: Any, command: Envelope) -> Any:
    return {"discarded": args["question"]}


async def draft(args: Any, command: Envelope) -> Any:
    await asyncio.sleep(WORK_SECONDS)
    if "[fail]" in args["question"]:
        raise CommandFailed("the writer crashed while drafting")
    return {"draft": f"{args['question']}: a summary of {len(args['sources'])} sources"}


async def delete_draft(args: Any, command: Envelope) -> Any:
    return {"deleted": args["question"]}


async def review(args: Any, command: Envelope) -> Any:
    await asyncio.sleep(WORK_SECONDS)
    return {"verdict": "approved"}


def crew(client: Client) -> list[AgentWorker]:
    """The three agent groups, ready to run (``async with``)."""
    return [
        AgentWorker(client, RESEARCHER, {"search": search, "discard_notes": discard_notes}),
        AgentWorker(client, WRITER, {"draft": draft, "delete_draft": delete_draft}),
        AgentWorker(client, REVIEWER, {"review": review}),
    ]
