"""A strict reader of Microsoft's OpenAPI 2.0 files: does a response body fit the schema?

Strict where JSON Schema is lenient: a property the schema does not define is an error
(unless the schema allows additional properties), so a misspelt or invented name fails.
Understands what the Compute files use: ``$ref`` across files, ``allOf``, ``type``,
``properties``, ``additionalProperties``, ``items``, ``required``, ``enum`` and
``format: date-time``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent / "openapi" / "specification/compute/resource-manager"
COMPUTE = ROOT / "Microsoft.Compute/ComputeRP/stable/2024-03-01"
OPERATION_FILES = ("virtualMachineScaleSet.json", "virtualMachineImage.json")
Schema = dict[str, Any]


class OpenApi:
    """The vendored files, loaded once, with the operations' response schemas."""

    def __init__(self) -> None:
        self._files: dict[Path, Schema] = {}

    def _file(self, path: Path) -> Schema:
        path = path.resolve()
        if path not in self._files:
            self._files[path] = json.loads(path.read_text())
        return self._files[path]

    def _resolve(self, ref: str, base: Path) -> tuple[Schema, Path]:
        target, _, pointer = ref.partition("#")
        path = (base.parent / target).resolve() if target else base
        node: Any = self._file(path)
        for part in pointer.strip("/").split("/"):
            node = node[part]
        return node, path

    def response(self, method: str, path: str, status: int) -> tuple[Schema, Path] | None:
        """The schema of ``status``'s body for the operation at ``path`` (None: no body)."""
        parts = path.strip("/").split("/")
        for name in OPERATION_FILES:
            spec_path = COMPUTE / name
            for template, operations in self._file(spec_path)["paths"].items():
                fixed = template.strip("/").split("/")
                if len(fixed) == len(parts) and all(
                    t.startswith("{") or t.lower() == p.lower()
                    for t, p in zip(fixed, parts, strict=True)
                ):
                    answer = operations[method.lower()]["responses"][str(status)]
                    schema = answer.get("schema")
                    return None if schema is None else (schema, spec_path)
        raise LookupError(f"no operation {method} {path} in the vendored OpenAPI files")

    def errors(self, value: Any, schema: Schema, base: Path, where: str = "$") -> list[str]:
        """Every way ``value`` breaks ``schema`` (empty when it fits)."""
        if "$ref" in schema:
            target, base = self._resolve(schema["$ref"], base)
            return self.errors(value, target, base, where)
        properties, required, extra = self._members(schema, base)
        kind = schema.get("type") or ("object" if properties or "allOf" in schema else None)
        if kind == "object":
            return self._object(value, properties, required, extra, where)
        return self._scalar(value, schema, base, kind, where)

    def _members(
        self, schema: Schema, base: Path
    ) -> tuple[dict[str, tuple[Schema, Path]], set[str], tuple[Schema, Path] | bool | None]:
        """Properties, required names and additionalProperties, ``allOf`` parts included."""
        properties = {k: (v, base) for k, v in schema.get("properties", {}).items()}
        required = set(schema.get("required", []))
        extra: tuple[Schema, Path] | bool | None = None
        if isinstance(schema.get("additionalProperties"), dict):
            extra = (schema["additionalProperties"], base)
        elif schema.get("additionalProperties") is True:
            extra = True
        for part in schema.get("allOf", []):
            part_schema, part_base = part, base
            if "$ref" in part:
                part_schema, part_base = self._resolve(part["$ref"], base)
            more, needed, more_extra = self._members(part_schema, part_base)
            properties = {**more, **properties}
            required |= needed
            extra = extra if extra is not None else more_extra
        return properties, required, extra

    def _object(
        self,
        value: Any,
        properties: dict[str, tuple[Schema, Path]],
        required: set[str],
        extra: tuple[Schema, Path] | bool | None,
        where: str,
    ) -> list[str]:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        found = [f"{where}: required property {name!r} missing" for name in required - set(value)]
        for name, item in value.items():
            at = f"{where}.{name}"
            if name in properties:
                found += self.errors(item, properties[name][0], properties[name][1], at)
            elif isinstance(extra, tuple):
                found += self.errors(item, extra[0], extra[1], at)
            elif extra is None and properties:
                found.append(f"{at}: not defined by the schema")
        return found

    def _scalar(self, value: Any, schema: Schema, base: Path, kind: Any, where: str) -> list[str]:
        checks = {
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
        }
        if kind in checks and not checks[kind](value):
            return [f"{where}: expected {kind}, got {value!r}"]
        if kind == "array":
            return [e for i, v in enumerate(value) for e in self.errors(
                v, schema.get("items", {}), base, f"{where}[{i}]")]  # fmt: skip
        if "enum" in schema and value not in schema["enum"]:
            return [f"{where}: {value!r} is not one of {schema['enum']}"]
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return [f"{where}: {value!r} is not an RFC 3339 date-time"]
        return []
