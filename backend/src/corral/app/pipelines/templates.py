"""Pipeline templates are data, not code: the only syntax is a named field with indexing.

``{query}`` names an input field, ``{analysis}`` a step (its response text), and
``{analysis[response]}`` / ``{analysis[parsed][city]}`` / ``{ideas[responses][0]}`` index into
its output with plain keys. Everything else ``str.format`` would do is refused when the run is
submitted (422 naming the template's field): attribute access (``{a.__class__}``), positional
fields (``{0}``, ``{}``), conversions (``{a!r}``), format specs (``{a:>999999999}`` would
allocate a gigabyte), keys that are not plain names or numbers, and deep indexing.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_KEYS = 4
MAX_FIELDS = 200


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class FieldRef:
    root: str
    keys: tuple[str | int, ...]
    text: str


def split_field(field_name: str) -> tuple[str, tuple[str | int, ...]]:
    """``a[b][0]`` -> ("a", ("b", 0)), as ``str.format`` reads it; ``.attr`` is refused."""
    cut = min((i for i in (field_name.find("."), field_name.find("[")) if i >= 0), default=None)
    root = field_name if cut is None else field_name[:cut]
    rest = "" if cut is None else field_name[cut:]
    if not KEY.match(root):
        raise TemplateError(f"{{{field_name}}}: a field is an input or step name")
    keys: list[str | int] = []
    while rest:
        if rest[0] == ".":
            raise TemplateError(
                f"{{{field_name}}}: attribute access is not allowed; index with [key] instead"
            )
        end = rest.find("]")
        if rest[0] != "[" or end < 0:
            raise TemplateError(f"{{{field_name}}}: malformed field (expected [key])")
        key = rest[1:end]
        if not key:
            raise TemplateError(f"{{{field_name}}}: empty [] index")
        if not KEY.match(key):
            raise TemplateError(
                f"{{{field_name}}}: [{key}] is not a plain key (letters, digits, _-)"
            )
        keys.append(int(key) if key.isdigit() else key)
        rest = rest[end + 1 :]
    if len(keys) > MAX_KEYS:
        raise TemplateError(f"{{{field_name}}}: at most {MAX_KEYS} [key] indexes")
    return root, tuple(keys)


def template_fields(template: str) -> list[FieldRef]:
    """Every field of ``template``; ``TemplateError`` for anything but ``{name[key]...}``."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"{exc} (write {{{{ or }}}} for a literal brace)") from None
    refs: list[FieldRef] = []
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name == "" or field_name[0].isdigit():
            raise TemplateError(
                f"positional field {{{field_name}}} is not allowed; name an input field or step"
            )
        if conversion:
            raise TemplateError(
                f"{{{field_name}!{conversion}}}: conversions are not allowed; "
                f"write {{{field_name}}}"
            )
        if spec:
            raise TemplateError(
                f"{{{field_name}:{spec}}}: format specs are not allowed; write {{{field_name}}}"
            )
        root, keys = split_field(field_name)
        refs.append(FieldRef(root, keys, field_name))
        if len(refs) > MAX_FIELDS:
            raise TemplateError(f"more than {MAX_FIELDS} fields in one template")
    return refs


def check_template(template: str | None) -> str | None:
    """Pydantic ``AfterValidator``: a template's syntax, so a bad one is a 422 naming it."""
    if template is not None:
        template_fields(template)
    return template
