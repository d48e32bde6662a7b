"""Delivering the runner bundle to a remote host, content-addressed.

The bundle lives at ``~/.cache/graflow/<bundle.filename>`` on the remote host (the file name holds
the digest of its content). Before the first task on a connection, one SFTP ``stat`` tells whether
that exact file is there (name and size match); only if it is not is the bundle uploaded, to a
temporary name first and then renamed into place, so a half-written file is never run and hosts
shared by several users of one account never see a partial bundle. After that, the connection
remembers the digest and later tasks pay nothing. A new graflow version has a new digest, hence a
new file name, and is shipped again.

Right after an upload (never on the fast path), the remote folder is pruned: bundles older than a
week that are not among the three newest, and temporaries of interrupted uploads older than a day,
are deleted (:func:`graflow.remote.bundle.stale_bundles`; files graflow did not write stay). A
bundle's age counts from its last use: every runner sets its archive's access time when it starts.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import posixpath
import secrets
import stat
import time

import paramiko

from graflow.exceptions import ConfigError
from graflow.remote.bundle import RunnerBundle, last_used, stale_bundles
from graflow_ssh.connection import SSHConnection

logger = logging.getLogger("graflow_ssh")

#: The cache folder on the remote host, relative to the login user's home.
REMOTE_CACHE_DIR = ".cache/graflow"


def remote_bundle_path(connection: SSHConnection, bundle: RunnerBundle) -> str:
    assert connection.home is not None
    return posixpath.join(connection.home, REMOTE_CACHE_DIR, bundle.filename)


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    parts = path.strip("/").split("/")
    current = "/" if path.startswith("/") else ""
    for part in parts:
        current = posixpath.join(current, part) if current else part
        try:
            attributes = sftp.stat(current)
        except FileNotFoundError:
            try:
                sftp.mkdir(current, 0o755)
            except OSError:
                # another task (or host) created it meanwhile: fine if it is a folder now
                attributes = sftp.stat(current)
                if not stat.S_ISDIR(attributes.st_mode or 0):
                    raise
            continue
        if not stat.S_ISDIR(attributes.st_mode or 0):
            raise NotADirectoryError(errno.ENOTDIR, f"{current} exists and is not a folder", current)


def ensure_bundle(connection: SSHConnection, bundle: RunnerBundle, timeout: float) -> str:
    """Make sure ``bundle`` is on the connection's host; return its absolute remote path."""
    if bundle.digest in connection.shipped and connection.home is not None:
        return remote_bundle_path(connection, bundle)
    # Serialise the first delivery per connection; later calls return above without waiting.
    with connection.ship_lock:
        if bundle.digest in connection.shipped and connection.home is not None:
            return remote_bundle_path(connection, bundle)
        channel_counted = False
        sftp = None
        try:
            channel = connection.open_session(timeout)
            channel_counted = True
            channel.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(channel)
            if connection.home is None:
                connection.home = sftp.normalize(".")
            path = remote_bundle_path(connection, bundle)
            _deliver(connection, sftp, bundle, path)
        except OSError as exc:
            if not connection.alive or isinstance(exc, (EOFError, ConnectionError)):
                raise  # the connection broke: the pool reconnects and tries again
            raise ConfigError(
                f"Cannot store the graflow runner on {connection.target.describe()} under "
                f"~/{REMOTE_CACHE_DIR}: {exc}. The login user needs a writable home folder there (or free disk space)."
            ) from exc
        finally:
            if sftp is not None:
                with contextlib.suppress(Exception):
                    sftp.close()
            if channel_counted:
                connection.channel_closed()
        connection.shipped.add(bundle.digest)
        return path


def _deliver(connection: SSHConnection, sftp: paramiko.SFTPClient, bundle: RunnerBundle, path: str) -> None:
    size = len(bundle.data)
    try:
        present = sftp.stat(path)
    except FileNotFoundError:
        present = None
    if present is not None and present.st_size == size and stat.S_ISREG(present.st_mode or 0):
        logger.debug("ssh: runner %s already on %s", bundle.filename, connection.target.describe())
        return
    if present is not None:
        logger.warning(
            "ssh: %s on %s has %s bytes instead of %d (damaged or partial); shipping it again",
            path,
            connection.target.describe(),
            present.st_size,
            size,
        )
    folder = posixpath.dirname(path)
    _makedirs(sftp, folder)
    temporary = posixpath.join(folder, f".{bundle.filename}.{secrets.token_hex(6)}.tmp")
    try:
        sftp.putfo(io.BytesIO(bundle.data), temporary, file_size=size, confirm=True)
        sftp.chmod(temporary, 0o644)
        try:
            sftp.posix_rename(temporary, path)
        except OSError:
            # servers without the posix-rename extension: plain rename refuses to replace a file
            with contextlib.suppress(OSError):
                sftp.remove(path)
            sftp.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(Exception):
            sftp.remove(temporary)
        raise
    logger.info("ssh: shipped runner %s (%d bytes) to %s", bundle.filename, size, connection.target.describe())
    _prune(connection, sftp, folder, bundle.filename)


def _prune(connection: SSHConnection, sftp: paramiko.SFTPClient, folder: str, current: str) -> None:
    """Delete stale bundles and leftover temporaries from the remote ``folder``; never raises.

    Ages are measured on the remote clock: "now" is the mtime of the bundle just uploaded there.
    """
    where = connection.target.describe()
    try:
        listing = sftp.listdir_attr(folder)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        logger.debug("ssh: cannot list %s on %s to prune old runners: %s", folder, where, exc)
        return
    entries = [
        (item.filename, last_used(item.st_mtime, item.st_atime)) for item in listing if stat.S_ISREG(item.st_mode or 0)
    ]
    now = next((mtime for name, mtime in entries if name == current and mtime is not None), None)
    for name in stale_bundles(entries, now=time.time() if now is None else float(now), current=current):
        try:
            sftp.remove(posixpath.join(folder, name))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            logger.debug("ssh: cannot delete stale %s/%s on %s: %s", folder, name, where, exc)
            continue
        logger.debug("ssh: deleted stale %s/%s on %s", folder, name, where)


__all__ = ["REMOTE_CACHE_DIR", "ensure_bundle", "remote_bundle_path"]
