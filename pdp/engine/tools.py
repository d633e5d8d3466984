"""Which tools of a server may an agent call: allow, deny, or depends on the arguments.

Decided by the same engine, floor and policies as a call, without a second reading
of the rules: for each tool of the server in the inventory, the policies whose scope
matches (agent, server, tool) are split into those that read the call's arguments
(``context.input``) and those that do not, and the latter are evaluated by Cedar
with the request as it would arrive, arguments aside. Then, for any arguments the
tool's input schema accepts (the others are always denied by the ``invalid_arguments``
floor rule, before any policy):

* an applying forbid (or an evaluation error) that reads no argument denies: **deny**;
* an applying permit, and no policy that reads arguments: **allow**;
* otherwise, if some policy in scope reads arguments: **depends_on_arguments** (a
  permit may apply only under conditions on ``context.input``, a forbid may, and a
  policy that reads an absent argument errors, which denies);
* otherwise nothing permits: **deny** (``default_deny``).

Whether a policy reads the arguments comes from Cedar's own parse of it, as for
``pdp access`` (:mod:`pdp.engine.access`; ``context`` used as a whole counts as
reading them). So an ``allow`` or ``deny`` here holds for every argument value,
which the property tests check against :meth:`Engine.decide`;
``depends_on_arguments`` is the honest answer for everything else. Unlike ``pdp
access``, which answers for every possible call, this answers for one agent's actual
intent, session and gateway at the server's clock.
"""

from __future__ import annotations

from pdp.engine.access import policy_reads
from pdp.engine.evaluate import Engine, PolicySubset
from pdp.engine.source import PolicyUnit
from pdp.engine.store import policy_set_of
from pdp.model import (
    REASON_DEFAULT_DENY,
    Decision,
    Effect,
    Reason,
    Request,
    ToolAnswer,
    ToolListing,
    ToolVerdict,
)

ARGUMENTS_FIELD = "input"
REASON_DEPENDS_ON_ARGUMENTS = "depends_on_arguments"


def reads_arguments(unit: PolicyUnit) -> bool:
    """Whether a policy's conditions may read the call's arguments: what it reads comes
    from Cedar's own parse of it (:func:`pdp.engine.access.policy_reads`, the same
    reading as ``pdp access``); ``context`` used as a whole counts as reading them."""
    reads = policy_reads(unit)
    return "arguments" in reads or "context" in reads


def server_tools(engine: Engine, server: str) -> tuple[str, ...]:
    """The tools of ``server`` in the inventory, sorted; empty for an unknown server."""
    return tuple(sorted(t for s, t in engine.compiled.inventory.tools if s == server))


def _argument_free(subset: PolicySubset) -> tuple[PolicySubset, tuple[PolicyUnit, ...]]:
    reading = tuple(u for u in subset.units if reads_arguments(u))
    if not reading:
        return subset, ()
    free = tuple(u for u in subset.units if not reads_arguments(u))
    return PolicySubset(policy_set_of(free), free), reading


def allowed_tools(engine: Engine, template: Request) -> ToolListing:
    """The answer for each tool of ``template.server`` in the inventory, for a call by
    ``template.agent`` with its intent, session, gateway and time (its ``tool`` and
    ``arguments`` are ignored). Never raises: a failure is a deny of every tool."""
    tools = server_tools(engine, template.server)
    requests = [_for_tool(template, tool) for tool in tools]
    verdicts: list[ToolVerdict] = []
    for request in requests:
        try:
            verdicts.append(_verdict(engine, request))
        except Exception as exc:  # any failure is a deny, never an allow
            verdicts.append(
                ToolVerdict(
                    request.tool,
                    ToolAnswer.DENY,
                    (Reason("evaluation_error", f"listing failed: {exc}"),),
                )
            )
    return ToolListing(template.agent, template.server, tuple(verdicts), engine.version)


def _for_tool(template: Request, tool: str) -> Request:
    return Request(
        agent=template.agent,
        server=template.server,
        tool=tool,
        arguments={},
        time=template.time,
        intent=template.intent,
        session=template.session,
        gateway=template.gateway,
    )


def _verdict(engine: Engine, request: Request) -> ToolVerdict:
    subset = engine.subset(request.agent, request.server, request.tool)
    free, reading = engine.derived(subset, _argument_free)
    decision = engine.evaluate_subset(free, request)
    reading_reasons = tuple(sorted((Reason(u.policy_id, u.reason) for u in reading),
                                   key=lambda r: r.policy))  # fmt: skip
    if decision.errors or _denied_by_policy(decision):
        return ToolVerdict(request.tool, ToolAnswer.DENY, decision.reasons, decision.errors)
    if decision.allowed and not reading:
        return ToolVerdict(request.tool, ToolAnswer.ALLOW, decision.reasons)
    if reading:
        return ToolVerdict(request.tool, ToolAnswer.DEPENDS_ON_ARGUMENTS, reading_reasons)
    return ToolVerdict(request.tool, ToolAnswer.DENY, decision.reasons)


def _denied_by_policy(decision: Decision) -> bool:
    """A deny determined by a forbid (not Cedar's default deny)."""
    return decision.effect is Effect.DENY and any(
        reason.policy != REASON_DEFAULT_DENY for reason in decision.reasons
    )
