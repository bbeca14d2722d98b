"""Cloud-LLM policies, shared by the agent and the platform's gateway (no Django: this runs on devices).

- ``document``: the policy document format and its validation (errors carry field paths).
- ``merge``: inheritance fleet -> group -> device into one effective policy, with the source of every field.
- ``decide``: the one pure function that turns a request into ``local``, ``cloud`` (with a model) or
  ``deny``, always with a reason code.
- ``signature``: the signed envelope the platform publishes on ``devices/{id}/policy`` and its verification,
  with a keeper that holds on to the last good policy.

See docs/policies.md for the format, the inheritance rules and the reason codes.
"""

from fleet_agent.policy.decide import BudgetLeft, CompiledPolicy, Decision, budget_left, compile_policy, decide
from fleet_agent.policy.document import PolicyError, validate_document
from fleet_agent.policy.merge import EffectivePolicy, merge_policies
from fleet_agent.policy.signature import PolicyKeeper, PolicyVerificationError, sign_policy, verify_signed_policy

__all__ = [
    "BudgetLeft",
    "CompiledPolicy",
    "Decision",
    "EffectivePolicy",
    "PolicyError",
    "PolicyKeeper",
    "PolicyVerificationError",
    "budget_left",
    "compile_policy",
    "decide",
    "merge_policies",
    "sign_policy",
    "validate_document",
    "verify_signed_policy",
]
