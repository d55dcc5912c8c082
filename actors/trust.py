"""What a process trusts and how it signs: the deployment's keyring and a signer per role.

Without a keyring nothing is checked and nothing need be signed (a test harness on a bare
nats-server); with one, every actor kind that runs here must be able to sign as its role, and
inputs the keyring does not accept are refused (``forged_event``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cadre.bus.errors import CadreError
from cadre.bus.signing import Keyring, Signer


class TrustError(CadreError):
    """A process that would write unsigned events into a signed deployment."""

    code = "trust_error"


@dataclass(frozen=True)
class Trust:
    """The keyring inputs are checked against (None: none), and this process's signers by role."""

    keyring: Keyring | None = None
    signers: Mapping[str, Signer] = field(default_factory=dict)

    def signer(self, role: str) -> Signer | None:
        return self.signers.get(role)

    def require(self, roles: Iterable[str]) -> None:
        """Refuse to start a role this process cannot sign as, when a keyring says events are signed."""
        if self.keyring is None:
            return
        missing = [r for r in roles if r not in self.signers]
        if missing:
            raise TrustError(
                f"this process runs {', '.join(missing)} but holds no key to sign with as that role: give it "
                "the role's credentials (--creds / CADRE_NATS_CREDS, made by `cadre auth init`)"
            )
