"""The policy archive: a copy of every policy version the service has loaded.

Layout: ``<archive root>/<version>/`` holds the files that make up that version (the
schema, the inventory and every ``.cedar`` file, at their relative paths; the built-in
floor is not copied, it always loads). The directory name is the version, i.e. the
content hash, so a version is written once and never changes: archiving a version that
is already there costs one ``stat``. A copy is written under a temporary name, loaded
to check that it really is that version, then renamed into place, so a reader never
sees a half-written version and two processes archiving at once do not clash.

``pdp replay --verify`` looks versions up here to decide each record with the policies
that made it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path

from pdp.engine import CompiledPolicies, PolicyLoadError, load_policies
from pdp.engine.inventory import INVENTORY_FILE
from pdp.engine.store import SCHEMA_FILE, policy_files, policy_version

# Beside the service's other state (pdp.service.config.DEFAULT_STATE_DIR is .pdp-state).
DEFAULT_ARCHIVE = Path(".pdp-state") / "policy-versions"
# A version is a hex content hash; anything else read from a log is not a path to follow.
VERSION_RE = re.compile(r"\A[0-9a-f]{8,64}\Z")


class ArchiveError(Exception):
    """A policy version could not be archived; the message says why."""


def version_files(directory: Path) -> list[Path]:
    """The files whose content makes a directory's policy version, relative to it."""
    root = directory.resolve()
    author, floor = policy_files(root)
    found = [root / name for name in (SCHEMA_FILE, INVENTORY_FILE) if (root / name).is_file()]
    return [path.relative_to(root) for path in [*found, *floor, *author]]


def archive_policies(
    policies: CompiledPolicies | Path | str, archive_root: Path | str = DEFAULT_ARCHIVE
) -> Path:
    """Keeps a copy of a policy version in ``archive_root/<version>/``; returns that path.

    ``policies`` is a loaded set (its ``directory`` is copied) or a policy directory.
    Raises :class:`ArchiveError` when the copy cannot be written or does not load as
    the same version (the directory changed after it was loaded: call again after the
    next load). Cheap when the version is already archived.
    """
    if isinstance(policies, CompiledPolicies):
        version, directory = policies.version, policies.directory
    else:
        try:
            compiled = load_policies(policies)
        except PolicyLoadError as exc:
            raise ArchiveError(f"{policies}: invalid policies: {exc}") from None
        version, directory = compiled.version, compiled.directory
    root = Path(archive_root)
    target = root / version
    if target.is_dir():
        return target
    try:
        root.mkdir(mode=0o750, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root))
    except OSError as exc:
        raise ArchiveError(f"cannot create the policy archive {root}: {exc}") from None
    try:
        for relative in version_files(directory):
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(directory / relative, destination)
        try:
            # The version is a hash of the files' content: hashing the copy proves it is
            # that version without a second parse and validation of the whole set.
            copied = policy_version(staging)
        except PolicyLoadError as exc:
            raise ArchiveError(f"the copy of {directory} cannot be read: {exc}") from None
        if copied != version:
            raise ArchiveError(
                f"{directory} changed after version {version} was loaded (it is now {copied});"
                " archive it again after the next load"
            )
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process archived the same version first: the content is identical.
    except OSError as exc:
        raise ArchiveError(f"cannot archive version {version} in {root}: {exc}") from None
    finally:
        if staging.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)
    return target


def archived_directory(archive_root: Path | str, version: str) -> Path | None:
    """The archived copy of ``version``, if there is one (``version`` comes from a log:
    only a hex hash is looked up, never a path)."""
    if not VERSION_RE.match(version):
        return None
    path = Path(archive_root) / version
    return path if path.is_dir() else None
