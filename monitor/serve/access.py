"""Who may see what on the clinic's server: clinicians, their tokens, and the patients each may see.

A JSON file (``serve --access FILE``) lists the clinicians::

    {"clinicians": [
        {"id": "dr-lee", "token_sha256": "<hex>", "patients": ["P001", "P002"]},
        {"id": "research", "token_sha256": "<hex>", "patients": ["*"]}
    ]}

Only a token's SHA-256 is kept (``mood-monitor serve --hash-token`` prints it
for a new token), so the file is not itself a key. A clinician sees the live
sessions, history and patient list of their patients only, and may stream a
room only for them. Without a file the server makes one token (printed at
start) that may see everything, as the one-room monitor does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path


class AccessConfigError(ValueError):
    """The access file is unreadable or malformed; the message names the problem."""


@dataclass(frozen=True)
class Clinician:
    """One person's access: ``patients`` is a set of ids, or ``None`` for every patient."""

    id: str
    token_sha256: str
    patients: frozenset[str] | None

    def may_see(self, patient: str | None) -> bool:
        """Unassigned sessions (no patient) are visible only to those who may see every patient."""
        if self.patients is None:
            return True
        return patient is not None and patient in self.patients


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ClinicAccess:
    """Tokens to clinicians; ``who(token)`` compares digests in constant time."""

    def __init__(self, clinicians: list[Clinician]) -> None:
        if not clinicians:
            raise AccessConfigError("the access file lists no clinicians")
        ids = [c.id for c in clinicians]
        if len(set(ids)) != len(ids):
            raise AccessConfigError("a clinician id appears twice in the access file")
        self.clinicians = clinicians

    @classmethod
    def single_token(cls, token: str | None = None) -> tuple["ClinicAccess", str]:
        """One token that sees everything (no access file): (access, the token to print)."""
        token = token or secrets.token_urlsafe(18)
        return cls([Clinician("owner", hash_token(token), None)]), token

    @classmethod
    def from_file(cls, path: str | Path) -> "ClinicAccess":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AccessConfigError(f"cannot read the access file {path}: {exc}") from exc
        entries = data.get("clinicians") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise AccessConfigError(f"{path}: expected {{\"clinicians\": [...]}}")
        clinicians = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise AccessConfigError(f"{path}: clinician {i} is not an object")
            cid, digest, patients = entry.get("id"), entry.get("token_sha256"), entry.get("patients")
            if not isinstance(cid, str) or not cid:
                raise AccessConfigError(f"{path}: clinician {i} has no 'id'")
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise AccessConfigError(f"{path}: clinician {cid!r} needs 'token_sha256', 64 lowercase hex digits "
                                        "(mood-monitor serve --hash-token prints one)")
            if not isinstance(patients, list) or not all(isinstance(p, str) and p for p in patients):
                raise AccessConfigError(f"{path}: clinician {cid!r} needs 'patients', a list of ids or [\"*\"]")
            clinicians.append(Clinician(cid, digest, None if "*" in patients else frozenset(patients)))
        return cls(clinicians)

    def who(self, token: str | None) -> Clinician | None:
        """The clinician a token belongs to, or None."""
        if not token:
            return None
        digest = hash_token(token).encode()
        found = None
        for clinician in self.clinicians:  # every entry is compared: the time does not tell which matched
            if hmac.compare_digest(digest, clinician.token_sha256.encode()):
                found = clinician
        return found
