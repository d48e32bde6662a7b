"""Host-key verification: known_hosts files, the policy for unknown hosts, and clear refusals.

Secure by default: a host whose key is not in known_hosts is refused (paramiko's
:class:`~paramiko.client.RejectPolicy`, with a message saying how to trust the host), and a host
whose key differs from the recorded one is always refused. ``allow_unknown_hosts=True`` accepts an
unknown host's key for this process only (nothing is written to known_hosts) and logs a warning
with its fingerprint each time.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shlex

import paramiko

from graflow_ssh.errors import SSHHostKeyError
from graflow_ssh.target import SSHTarget

logger = logging.getLogger("graflow_ssh")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(hostname: str, port: int) -> str:
    """How known_hosts names a host: ``host`` on port 22, ``[host]:port`` elsewhere."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


def load_known_hosts(client: paramiko.SSHClient, target: SSHTarget) -> list[str]:
    """Load ``target``'s known_hosts files into ``client`` (read-only); return the files read."""
    loaded = []
    for path in target.known_hosts:
        if not os.path.exists(path):
            continue
        try:
            client.load_system_host_keys(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise SSHHostKeyError(
                f"Cannot read the known_hosts file {path}: {exc}. Fix its permissions or give another file with "
                f"the ssh handler's known_hosts setting.",
                target.hostname,
                target.port,
            ) from exc
        loaded.append(path)
    return loaded


def _trust_hint(target: SSHTarget) -> str:
    file = target.known_hosts[0] if target.known_hosts else os.path.expanduser("~/.ssh/known_hosts")
    port = f"-p {target.port} " if target.port != 22 else ""
    return f"ssh-keyscan {port}{shlex.quote(target.hostname)} >> {shlex.quote(file)}"


def unknown_host_error(target: SSHTarget, key: paramiko.PKey, loaded: list[str]) -> SSHHostKeyError:
    name = known_hosts_name(target.hostname, target.port)
    if loaded:
        where = "known_hosts file(s) " + ", ".join(loaded)
    elif target.known_hosts:
        where = "known_hosts (no file exists at " + ", ".join(target.known_hosts) + ")"
    else:
        where = "known_hosts"
    fp = fingerprint(key)
    return SSHHostKeyError(
        f"Refusing to connect to {target.describe()}: its host key ({key.get_name()} {fp}) has no entry for "
        f"{name} in {where}, so there is no way to tell it is the right machine. If you trust it, check the "
        f"fingerprint with the host's administrator and record it: `{_trust_hint(target)}` (or `ssh -p {target.port} "
        f"{target.user}@{target.hostname}` once and answer yes). To accept unknown hosts without checking (not "
        f"recommended), set handler_kwargs allow_unknown_hosts=True.",
        target.hostname,
        target.port,
        fp,
    )


def changed_host_error(target: SSHTarget, offered: paramiko.PKey, expected: paramiko.PKey) -> SSHHostKeyError:
    name = known_hosts_name(target.hostname, target.port)
    files = ", ".join(p for p in target.known_hosts if os.path.exists(p)) or "known_hosts"
    file = target.known_hosts[0] if target.known_hosts else "~/.ssh/known_hosts"
    return SSHHostKeyError(
        f"Refusing to connect to {target.describe()}: its HOST KEY HAS CHANGED. known_hosts ({files}) records "
        f"{expected.get_name()} {fingerprint(expected)}, but the server offered {offered.get_name()} "
        f"{fingerprint(offered)}. Someone may be intercepting the connection, or the host was reinstalled. If you "
        f"have confirmed the new key is legitimate, replace the old entry: `ssh-keygen -R {shlex.quote(name)} -f "
        f"{shlex.quote(file)}` then `{_trust_hint(target)}`. allow_unknown_hosts does not override this.",
        target.hostname,
        target.port,
        fingerprint(offered),
    )


class RefuseUnknownHost(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising :class:`SSHHostKeyError` with what to do instead of a bare refusal."""

    def __init__(self, target: SSHTarget, loaded: list[str]) -> None:
        self.target = target
        self.loaded = loaded

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise unknown_host_error(self.target, key, self.loaded)


class AcceptUnknownHost(paramiko.MissingHostKeyPolicy):
    """``allow_unknown_hosts=True``: accept an unknown key for this connection only, and say so in the log."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        logger.warning(
            "ssh: accepting the UNVERIFIED host key %s %s of %s because allow_unknown_hosts=True (not saved to "
            "known_hosts). To verify it instead, record it: %s",
            key.get_name(),
            fingerprint(key),
            self.target.describe(),
            _trust_hint(self.target),
        )


__all__ = [
    "AcceptUnknownHost",
    "RefuseUnknownHost",
    "changed_host_error",
    "fingerprint",
    "known_hosts_name",
    "load_known_hosts",
    "unknown_host_error",
]
