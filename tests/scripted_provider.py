"""Test drivers of the provider port: a provider scripted with its answers, and the bare
parse-and-repair driver (no budget: actors go through ``Context.infer``).

Each call of :class:`RecordedProvider` takes the next answer: an :class:`LLMResponse` is
returned, a :class:`ProviderError` is raised. A call beyond the script is reported as
:class:`ReplayExhausted` rather than invented. The requests received are kept in
``requests`` so a test can compare them.

    CadreError
     └─ ReplayExhausted               a call beyond the recorded answers (code "replay_exhausted")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cadre.bus.errors import CadreError
from cadre.planner.providers.base import LLMRequest, LLMResponse, Provider, ProviderError
from cadre.planner.providers.structured import Outcome, structured_flow

__all__ = ["RecordedProvider", "ReplayExhausted", "run_structured"]

T = TypeVar("T")


class ReplayExhausted(CadreError):
    """The replayed code made more LLM calls than the recording holds."""

    code = "replay_exhausted"

    def __init__(self, recorded: int, request: LLMRequest) -> None:
        super().__init__(
            f"call {recorded + 1} ({request.kind} with model {request.model}) has no recorded answer: "
            f"the recording holds {recorded}; the code under replay diverged from the recorded run, "
            "or the recording is incomplete"
        )
        self.recorded = recorded
        self.request = request


class RecordedProvider:
    """Serves ``answers`` one per call, in order."""

    def __init__(self, answers: Sequence[LLMResponse | ProviderError], *, name: str = "recorded") -> None:
        self.name = name
        self._answers = tuple(answers)
        self.requests: list[LLMRequest] = []

    @property
    def remaining(self) -> int:
        """Answers not served yet."""
        return len(self._answers) - len(self.requests)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        index = len(self.requests)
        if index >= len(self._answers):
            raise ReplayExhausted(len(self._answers), request)
        self.requests.append(request)
        answer = self._answers[index]
        if isinstance(answer, ProviderError):
            raise answer
        return answer

    async def aclose(self) -> None:
        return None


async def run_structured(
    provider: Provider, request: LLMRequest, validate: Callable[[dict[str, Any]], T]
) -> Outcome[T]:
    """Drive :func:`structured_flow` with ``provider.complete`` directly (adapter tests)."""
    flow = structured_flow(request, validate)
    current = next(flow)
    while True:
        reply: LLMResponse | ProviderError
        try:
            reply = await provider.complete(current)
        except ProviderError as exc:
            reply = exc
        try:
            current = flow.send(reply)
        except StopIteration as done:
            outcome: Outcome[T] = done.value
            return outcome
