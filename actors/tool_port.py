"""The agents' tools as the context's ``Tools`` port: a ToolBox whose errors become ToolFailure."""

from __future__ import annotations

from typing import Any

from cadre.actors.context import ToolFailure
from cadre.actors.tools import ToolBox, ToolCall, ToolError
from cadre.bus.plan import ErrorInfo


class ToolRunner:
    def __init__(self, box: ToolBox) -> None:
        self.box = box

    async def run(
        self, tool: str, inputs: dict[str, Any], idempotency_key: str, *, compensable: bool = False
    ) -> dict[str, Any]:
        try:
            return await self.box.call(tool, inputs, ToolCall(idempotency_key=idempotency_key, compensable=compensable))
        except ToolError as exc:
            raise ToolFailure(
                tool, ErrorInfo(code=exc.code, message=exc.message), exc.retryable, output=exc.output
            ) from None
