"""``cadre replay WF``: re-run a workflow's handlers on its record and compare, or try a what-if.

    cadre replay WF [--from-file FILE] [--json] [--policy FILE] [--nats URL] [--data-dir DIR]

Every handler invocation of the workflow is re-run on the state it decided on, with the
recorded clock and the recorded outside answers (:mod:`actors.replay`);
its outputs must equal the recorded events. With ``--from-file`` it reads an export and
needs nothing else: no NATS connection, no model, no tools. The deployment's settings
(tool modules, catalog policy, approval timeout) come from ``cadre.settings`` as for every
command, and must be the ones the workflow ran with.

``--policy FILE`` runs a what-if instead (``cadre/whatif_policy.py``): the same recorded
inputs with a changed catalog, limits, caps, level or mode, and lists the decisions that
would differ, each with its event.

Exit codes: 0 ``N/N events reproduced`` (what-if: no decision would differ); 1 with the
first divergence and every further one (what-if: the decisions that would differ); 2 for
a usage error (no such workflow, an unreadable file or policy).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from cadre.actors.inference import LLM
from cadre.actors.replay import RecordOnlyProvider, Replayer
from cadre.bus.subjects import check_token
from cadre.commands import EXIT_FAILED, EXIT_OK
from cadre.llm import LLMSettingsError, models_for, provider_name
from cadre.render import json_line
from cadre.safe_text import visible_lines
from cadre.settings import Settings
from cadre.system import system_specs
from cadre.whatif_policy import load_policy, what_if_setup
from cadre.workflow_records import read_records


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``replay`` on the CLI's subcommands (``parents``: the bus and --json options)."""
    p = sub.add_parser(
        "replay", parents=parents, help="re-run a workflow's handlers on its record (--policy: a what-if)"
    )
    p.add_argument("workflow_id")
    p.add_argument("--from-file", type=Path, metavar="FILE", help="read an exported file instead of NATS")
    p.add_argument("--policy", type=Path, metavar="FILE", help="what-if: a policy file (JSON or TOML) to try")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """The ``replay`` command."""
    wf = check_token("workflow id", args.workflow_id)
    policy = load_policy(args.policy) if args.policy is not None else None  # usage errors before any reading
    read = await read_records(settings, wf, args.from_file, name="cadre-replay")
    records = read.records
    replayer = dataclasses.replace(replayer_for(settings), keyring=read.keyring)
    if policy is not None:
        setup = what_if_setup(settings, policy, replayer)
        outcome = setup.replayer.what_if(records, setup.whatif, setup.catalog)
        if args.json:
            print(json_line({"what_if": str(args.policy), **outcome.to_json()}))
        else:
            print(visible_lines(outcome.lines()))
        return EXIT_OK if not outcome.changes else EXIT_FAILED
    result = replayer.replay(records)
    if args.json:
        print(json_line(result.to_json()))
    else:
        print(visible_lines(result.lines()))
    return EXIT_OK if result.ok else EXIT_FAILED


def replayer_for(settings: Settings) -> Replayer:
    """The live handlers of ``settings``' deployment, and the model it configures (for records
    whose consultations do not name theirs; it is never called)."""
    return Replayer(system_specs(settings), fallback_llm=_configured_llm(settings))


def _configured_llm(settings: Settings) -> LLM | None:
    try:
        name = provider_name(settings)
    except LLMSettingsError:
        name = settings.llm_provider  # named but without its key: a replay calls nothing anyway
    if name is None or name in ("auto", "none"):
        return None
    limits = {
        "default": settings.llm_max_output_tokens,
        "plan": settings.llm_max_output_tokens_plan,
        "adapt": settings.llm_max_output_tokens_plan,
    }
    return LLM(provider=RecordOnlyProvider(name), models=models_for(settings, name), max_output_tokens=limits)
