"""Loading a policy directory into an immutable, validated, versioned policy set.

A policy directory holds::

    schema.cedarschema   the Cedar schema: entity types, context, one action per tool
    entities.json        the inventory (see pdp.engine.inventory), with each tool's
                         input schema (pdp.engine.arguments, pdp.engine.input_types)
    **/*.cedar           author policies (permit and forbid), each with @id and @reason
    floor/*.cedar        optional extra floor policies (forbid only)
    **/*.test.yaml|json  policy unit tests, run by `pdp test` (ignored here)

The built-in floor (``pdp/floor``) always loads, whatever directory is given.
Everything is parsed and validated once; the result is a :class:`CompiledPolicies`
that ``decide`` only reads, so it can be shared across threads and swapped atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import cedarpy

from pdp.engine.input_types import check_input_types
from pdp.engine.inventory import INVENTORY_FILE, Inventory, InventoryError, load_inventory
from pdp.engine.scope import ScopeIndex, Uid
from pdp.engine.source import (
    Diagnostic,
    PolicyUnit,
    Statement,
    locate_parse_errors,
    parse_file,
    split_statements,
)
from pdp.engine.validation import SchemaClasses, confirm_valid, scan_heads

SCHEMA_FILE = "schema.cedarschema"
FLOOR_DIR = "floor"
BUILTIN_FLOOR = Path(__file__).resolve().parent.parent / "floor"
# Reason ids the engine itself produces; a policy must not reuse them.
RESERVED_POLICY_IDS = frozenset(
    {"default_deny", "invalid_request", "invalid_arguments", "evaluation_error", "internal_error"}
)


class PolicyLoadError(Exception):
    """A policy directory is broken. ``diagnostics`` locates every problem found."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


@dataclass(frozen=True)
class CompiledPolicies:
    """A validated, indexed policy set, ready for evaluation. Never mutated after load."""

    version: str
    directory: Path
    units: tuple[PolicyUnit, ...]  # in load order: floor first, then files by path
    policies: Mapping[str, PolicyUnit]  # by @id
    index: ScopeIndex
    ancestors: Mapping[Uid, frozenset[Uid]]  # transitive parents of every known entity
    entities: cedarpy.Entities
    schema: cedarpy.Schema
    inventory: Inventory
    _full: list[cedarpy.PolicySet] = field(default_factory=list, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.units)

    def full_policy_set(self) -> cedarpy.PolicySet:
        """Every policy in one Cedar set (unindexed): for checks and comparisons only."""
        if not self._full:
            self._full.append(policy_set_of(self.units))
        return self._full[0]


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def policy_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """Returns (author files, extra floor files) of a directory, sorted for a stable version.

    ``floor/`` is normally a link to the built-in floor, which always loads. A directory
    copied without its links (``cp -rL``, a Kubernetes ConfigMap, an image build) holds
    copies instead: an unchanged copy of a built-in floor file is that file (skipped, as
    the link would be); a changed one raises :class:`PolicyLoadError` naming both files.
    """
    directory = directory.resolve()
    floor_dir = (directory / FLOOR_DIR).resolve()
    builtin = {path.name: path for path in BUILTIN_FLOOR.glob("*.cedar")}
    author: list[Path] = []
    floor: list[Path] = []
    changed: list[Diagnostic] = []
    for path in sorted(directory.rglob("*.cedar")):
        resolved = path.resolve()
        if resolved.is_relative_to(BUILTIN_FLOOR):
            continue  # a symlink to the built-in floor, which always loads anyway
        if not resolved.is_relative_to(floor_dir):
            author.append(path)
            continue
        original = builtin.get(path.name) if resolved.parent == floor_dir else None
        if original is not None:
            try:
                unchanged = path.read_bytes() == original.read_bytes()
            except OSError:
                unchanged = False  # the load reports why it cannot be read
            if unchanged:
                continue
            changed.append(
                Diagnostic(
                    _display(path, directory),
                    0,
                    f"differs from pdp's built-in floor file {original}: the built-in"
                    " floor always loads and cannot be changed; restore the copy (or link"
                    f" {FLOOR_DIR}/ to {BUILTIN_FLOOR}) and put extra floor rules in a file"
                    " of another name",
                )
            )
            continue
        floor.append(path)
    if changed:
        raise PolicyLoadError(changed)
    return author, floor


def _validate(
    text: str, display: str, statements: list[Statement], schema: cedarpy.Schema
) -> list[Diagnostic]:
    result = cedarpy.validate_policies(text, schema)
    if result.validation_passed:
        return []
    if any(not error.policy_id for error in result.errors):
        return locate_parse_errors(statements, display)
    names = result.id_annotations_by_policy_id
    out = []
    for error in result.errors:
        position = int(error.policy_id.removeprefix("policy") or -1)
        line = statements[position].line if 0 <= position < len(statements) else 0
        message = error.error
        if error.policy_id in names:
            message = message.replace(f"`{error.policy_id}`", f'"{names[error.policy_id]}"')
        out.append(Diagnostic(display, line, message))
    return out


def _parents(entities: cedarpy.Entities) -> dict[Uid, frozenset[Uid]]:
    """Direct parents of every entity, actions included (Cedar adds those from the schema)."""
    return {
        (e["uid"]["type"], e["uid"]["id"]): frozenset((p["type"], p["id"]) for p in e["parents"])
        for e in json.loads(str(entities))
    }


def _closure(parents: Mapping[Uid, frozenset[Uid]]) -> dict[Uid, frozenset[Uid]]:
    """Transitive ancestors, iteratively (groups may nest deeply; cycles are harmless)."""
    out: dict[Uid, frozenset[Uid]] = {}
    for uid in parents:
        seen: set[Uid] = set()
        stack = list(parents[uid])
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(parents.get(current, ()))
        out[uid] = frozenset(seen)
    return out


def _action_parents(parents: Mapping[Uid, frozenset[Uid]]) -> dict[str, frozenset[str]]:
    return {
        uid[1]: frozenset(p[1] for p in direct if p[0] == "Action")
        for uid, direct in parents.items()
        if uid[0] == "Action"
    }


def _check_tools_against_schema(
    inventory: Inventory, actions: dict[str, frozenset[str]], inventory_name: str, schema_name: str
) -> list[Diagnostic]:
    problems = []
    for server, tool in sorted(inventory.tools):
        action = f"{server}/{tool}"
        parents = actions.get(action)
        if parents is None:
            problems.append(
                Diagnostic(
                    schema_name,
                    0,
                    f"tool {action} is in {inventory_name} but the schema declares no action"
                    f' "{action}" (generate it with `pdp schema from-mcp`)',
                )
            )
            continue
        if server not in parents:
            problems.append(
                Diagnostic(
                    schema_name, 0, f'action "{action}" must be declared in Action::"{server}"'
                )
            )
        declared = inventory.tool_groups[(server, tool)]
        if declared and declared != parents - {server}:
            problems.append(
                Diagnostic(
                    inventory_name,
                    0,
                    f"tool {action}: groups {sorted(declared)} differ from the schema's"
                    f" {sorted(parents - {server})}",
                )
            )
    known = {f"{s}/{t}" for s, t in inventory.tools}
    for action in sorted(actions):
        if "/" in action and action not in known:
            problems.append(
                Diagnostic(
                    inventory_name,
                    0,
                    f'the schema declares tool action "{action}"'
                    " but no such tool is in the inventory",
                )
            )
    return problems


def _sources(root: Path) -> list[tuple[Path, str, bool]]:
    """(path, display name, is floor) of every policy file, in load (and hash) order."""
    author_files, extra_floor = policy_files(root)
    sources: list[tuple[Path, str, bool]] = [
        (p, f"<floor>/{p.name}", True) for p in sorted(BUILTIN_FLOOR.glob("*.cedar"))
    ]
    sources += [(p, _display(p, root), True) for p in extra_floor]
    sources += [(p, _display(p, root), False) for p in author_files]
    return sources


def policy_version(directory: Path | str) -> str:
    """The version :func:`load_policies` gives a directory, from the files' content
    alone (nothing parsed or validated: ≈ 1 % of a load at 100,000 policies).

    Raises :class:`PolicyLoadError` when the directory or a file cannot be read.
    """
    root = Path(directory)
    if not root.is_dir():
        raise PolicyLoadError([Diagnostic(str(root), 0, "policy directory does not exist")])
    root = root.resolve()
    files = [(root / SCHEMA_FILE, SCHEMA_FILE)] if (root / SCHEMA_FILE).exists() else []
    files += [(path, display) for path, display, _ in _sources(root)]
    if (root / INVENTORY_FILE).exists():
        files.append((root / INVENTORY_FILE, INVENTORY_FILE))
    digest = hashlib.sha256()
    for path, display in files:
        try:
            data = path.read_bytes()
            data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyLoadError([Diagnostic(display, 0, f"cannot read: {exc}")]) from None
        digest.update(display.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def load_policies(directory: Path | str) -> CompiledPolicies:
    """Loads, validates and compiles a policy directory; raises :class:`PolicyLoadError`."""
    root = Path(directory)
    if not root.is_dir():
        raise PolicyLoadError([Diagnostic(str(root), 0, "policy directory does not exist")])
    root = root.resolve()
    digest = hashlib.sha256()
    diagnostics: list[Diagnostic] = []

    def read_quietly(path: Path, display: str) -> str | Diagnostic:
        try:
            data = path.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return Diagnostic(display, 0, f"cannot read: {exc}")
        digest.update(display.encode() + b"\0" + data + b"\0")
        return text

    def read(path: Path, display: str) -> str | None:
        text = read_quietly(path, display)
        if isinstance(text, Diagnostic):
            diagnostics.append(text)
            return None
        return text

    schema_path = root / SCHEMA_FILE
    schema: cedarpy.Schema | None = None
    if not schema_path.exists():
        diagnostics.append(Diagnostic(SCHEMA_FILE, 0, "schema file is missing"))
    else:
        schema_text = read(schema_path, SCHEMA_FILE)
        if schema_text is not None:
            try:
                schema = cedarpy.Schema.from_str(schema_text)
            except ValueError as exc:
                diagnostics.append(Diagnostic(SCHEMA_FILE, 0, f"invalid schema: {exc}"))

    sources = _sources(root)

    # Read and split every file first, then confirm validity in one pass over all of
    # them (pdp.engine.validation); a file that pass cannot confirm is validated the
    # exact way below, so diagnostics and their order are as if file by file.
    texts = [read_quietly(path, display) for path, display, _ in sources]
    split = [split_statements(t) if isinstance(t, str) else [] for t in texts]
    heads = [scan_heads(statements) for statements in split]
    # The schema's actions by appliesTo, with their small schemas: shared by the policy
    # validation and the input-type check below.
    classes = SchemaClasses.of(schema) if schema is not None else None
    unconfirmed = (
        confirm_valid(schema, list(zip(split, heads, strict=True)), classes)
        if schema is not None
        else set()
    )
    units: dict[str, PolicyUnit] = {}
    for position, (_path, display, is_floor) in enumerate(sources):
        text = texts[position]
        if isinstance(text, Diagnostic):
            diagnostics.append(text)
            continue
        statements = split[position]
        if schema is not None and position in unconfirmed:
            validation = _validate(text, display, statements, schema)
            if validation:
                diagnostics += validation
                continue
        file_units, file_diagnostics = parse_file(
            statements, display, floor=is_floor, heads=heads[position]
        )
        diagnostics += file_diagnostics
        if file_diagnostics:
            continue
        for unit in file_units:
            if unit.policy_id in RESERVED_POLICY_IDS:
                diagnostics.append(
                    Diagnostic(display, unit.line, f'@id "{unit.policy_id}" is reserved by pdp')
                )
            elif unit.policy_id in units:
                first = units[unit.policy_id]
                diagnostics.append(
                    Diagnostic(
                        display,
                        unit.line,
                        f'duplicate @id "{unit.policy_id}" (first defined at {first.location})',
                    )
                )
            else:
                units[unit.policy_id] = unit

    inventory: Inventory | None = None
    entities: cedarpy.Entities | None = None
    parents: dict[Uid, frozenset[Uid]] = {}
    inventory_path = root / INVENTORY_FILE
    if read(inventory_path, INVENTORY_FILE) is not None or not inventory_path.exists():
        try:
            inventory = load_inventory(inventory_path, INVENTORY_FILE)
        except InventoryError as exc:
            diagnostics += exc.diagnostics
    if inventory is not None and schema is not None:
        try:
            entities = cedarpy.Entities.from_json_str(json.dumps(list(inventory.entities)), schema)
        except ValueError as exc:
            diagnostics.append(Diagnostic(INVENTORY_FILE, 0, f"does not match the schema: {exc}"))
        else:
            parents = _parents(entities)
            actions = _action_parents(parents)
            diagnostics += _check_tools_against_schema(
                inventory, actions, INVENTORY_FILE, SCHEMA_FILE
            )
            # Cedar must type context.input as the input schemas do (pdp.engine.input_types).
            inputs = {
                f"{server}/{tool}": checks.schema
                for (server, tool), checks in inventory.arguments.items()
                if f"{server}/{tool}" in actions
            }
            diagnostics += [
                Diagnostic(SCHEMA_FILE, 0, f'action "{action}": {problem}')
                for action, problem in check_input_types(schema, inputs, classes)
            ]

    if diagnostics:
        raise PolicyLoadError(diagnostics)
    assert schema is not None and entities is not None and inventory is not None
    ordered = tuple(units.values())
    return CompiledPolicies(
        version=digest.hexdigest()[:16],
        directory=root,
        units=ordered,
        policies=MappingProxyType(dict(units)),
        index=ScopeIndex([unit.scope for unit in ordered]),
        ancestors=MappingProxyType(_closure(parents)),
        entities=entities,
        schema=schema,
        inventory=inventory,
    )


def policy_set_of(units: Iterable[PolicyUnit]) -> cedarpy.PolicySet:
    """A Cedar set of ``units``; Cedar names them ``policy0``, ``policy1``… in this order."""
    return cedarpy.PolicySet.from_str("\n".join(unit.text for unit in units))
