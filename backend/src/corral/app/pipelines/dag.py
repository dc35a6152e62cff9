"""Checking a pipeline before anything runs, and rendering its templates safely.

Templates use ``str.format``'s field syntax and nothing else (``templates.py``): ``{query}`` is
an input field, ``{analysis}`` a step's response text, ``{analysis[parsed][city]}`` indexes into
its output. Attribute access, positional fields, conversions and format specs are refused when
the run is submitted; rendering never calls ``format`` with a user's spec.
"""

from __future__ import annotations

import json
import string
from graphlib import CycleError, TopologicalSorter
from typing import Any

from corral.app.pipelines.schemas import VARIANTS, PipelineRunRequest, StepDef, StepKind
from corral.app.pipelines.templates import FieldRef, TemplateError, split_field, template_fields

__all__ = ["PipelineInvalid", "TemplateError", "render", "template_fields", "validate"]

OUTPUT_FIELDS: dict[StepKind, frozenset[str]] = {
    "generate": frozenset(
        {
            "response", "parsed", "model", "provider_model", "attempts", "patching_attempts",
            "usage", "execution_time_s", "cache_hit", "finish_reason",
        }
    ),
    "group": frozenset({"response", "responses", "outputs", "model", "usage"}),
    "chord": frozenset({"response", "parsed", "responses", "outputs", "combine", "model", "usage"}),
}  # fmt: skip


class PipelineInvalid(ValueError):
    """Every problem found, each naming the step and what to fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _ancestors(steps: list[StepDef]) -> dict[str, set[str]]:
    deps = {s.name: set(s.depends_on) for s in steps}
    memo: dict[str, set[str]] = {}

    def visit(name: str) -> set[str]:
        if name not in memo:
            found: set[str] = set()
            for parent in deps.get(name, ()):
                found |= {parent, *visit(parent)}
            memo[name] = found
        return memo[name]

    return {s.name: visit(s.name) for s in steps}


def _index(value: Any, keys: tuple[str | int, ...]) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value[str(key)]
        elif isinstance(value, list) and isinstance(key, int):
            value = value[key]
        else:
            raise KeyError(key)
    return value


def _check_models(step: StepDef, configured: list[str], default: str | None) -> list[str]:
    wanted: list[str | None] = [step.model, *step.fallback_models]
    wanted += [v.model for v in step.variants if v.model is not None]
    if step.combine is not None:
        wanted.append(step.combine.model)
    problems = [
        f"step {step.name}: unknown model {name!r}; configured: {configured}"
        for name in dict.fromkeys(wanted)
        if name is not None and name not in configured
    ]
    if default is None and None in wanted:
        problems.append(f"step {step.name}: no model given and no default model is configured")
    return problems


def validate(request: PipelineRunRequest, *, models: list[str], default_model: str | None) -> None:
    """Raise ``PipelineInvalid`` listing every problem; nothing is sent before this passes."""
    steps = request.steps
    by_name = {s.name: s for s in steps}
    names = [s.name for s in steps]
    problems: list[str] = []
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate step name(s) {duplicates}")
    for step in steps:
        if step.name == VARIANTS:
            problems.append(f"step name {VARIANTS!r} is reserved (chord combine templates use it)")
        if step.name in request.input:
            problems.append(f"step {step.name} has the same name as an input field; rename one")
        for dep in step.depends_on:
            if dep == step.name:
                problems.append(f"step {step.name} depends on itself")
            elif dep not in by_name:
                problems.append(
                    f"step {step.name} depends on unknown step {dep!r}; steps are {names}"
                )
        problems += _check_models(step, models, default_model)
    if problems:
        raise PipelineInvalid(problems)

    try:
        TopologicalSorter({s.name: s.depends_on for s in steps}).prepare()
    except CycleError as exc:
        cycle = list(reversed(exc.args[1]))
        raise PipelineInvalid(
            [f"dependency cycle: {' -> '.join(cycle)} (each step depends on the next)"]
        ) from None

    ancestors = _ancestors(steps)
    for step in steps:
        templates = [("prompt_template", step.prompt_template, False)]
        templates += [
            (f"variants[{i}].prompt_template", v.prompt_template, False)
            for i, v in enumerate(step.variants)
            if v.prompt_template is not None
        ]
        if step.combine is not None:
            templates.append(("combine.prompt_template", step.combine.prompt_template, True))
        for where, template, sees_variants in templates:
            try:
                refs = template_fields(template)
            except TemplateError as exc:
                problems.append(f"step {step.name} {where}: {exc}")
                continue
            for ref in refs:
                problem = _check_ref(request, by_name, ancestors[step.name], ref, sees_variants)
                if problem:
                    problems.append(f"step {step.name} {where}: {problem}")
    if problems:
        raise PipelineInvalid(problems)


def _check_ref(
    request: PipelineRunRequest,
    by_name: dict[str, StepDef],
    ancestors: set[str],
    ref: FieldRef,
    sees_variants: bool,
) -> str | None:
    if sees_variants and ref.root == VARIANTS:
        if len(ref.keys) > 1 or (ref.keys and not isinstance(ref.keys[0], int)):
            return f"{{{ref.text}}}: use {{{VARIANTS}}} or {{{VARIANTS}[0]}}"
        return None
    if ref.root in request.input:
        try:
            _index(request.input[ref.root], ref.keys)
        except (KeyError, IndexError):
            return f"{{{ref.text}}}: the input has no such field"
        return None
    if ref.root in by_name:
        if ref.root not in ancestors:
            return (
                f"{{{ref.text}}} references step {ref.root!r} which is not an ancestor; "
                "add it to depends_on"
            )
        fields = OUTPUT_FIELDS[by_name[ref.root].kind]
        if ref.keys and ref.keys[0] not in fields:
            return (
                f"{{{ref.text}}}: step {ref.root} has no output {ref.keys[0]!r}; "
                f"one of {sorted(fields)}"
            )
        return None
    return f"{{{ref.text}}} is neither an input field {sorted(request.input)} nor a step"


class StepValue(dict[str, Any]):
    """A step's output in templates: ``{step}`` alone renders its response text."""

    def __format__(self, spec: str) -> str:
        return format(str(self.get("response") or ""), spec)


def join_responses(responses: list[str]) -> str:
    """How a group's responses read as one text (``{step}`` of a group, ``{variants}``)."""
    return "\n\n".join(f"Variant {i}:\n{text}" for i, text in enumerate(responses, 1))


class VariantsValue(list[str]):
    """``{variants}`` renders all responses joined; ``{variants[0]}`` one of them."""

    def __format__(self, spec: str) -> str:
        return format(join_responses(list(self)), spec)


class _DataFormatter(string.Formatter):
    """Indexing only (no attributes); dicts and lists render as JSON, None as ''."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        root, keys = split_field(field_name)
        if root not in kwargs:
            raise TemplateError(f"{{{field_name}}}: no value for {root!r}")
        value = kwargs[root]
        try:
            value = _index(value, keys) if keys else value
        except (KeyError, IndexError):
            raise TemplateError(f"{{{field_name}}}: no such field in the value") from None
        return value, root

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion:
            raise TemplateError(f"!{conversion}: conversions are not allowed")
        return value

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec:  # validated away at submission; never pad to a user's width here
            raise TemplateError(f":{format_spec}: format specs are not allowed")
        if isinstance(value, StepValue | VariantsValue):
            return format(value, "")
        if value is None:
            return ""
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False)
        return str(value)


_FORMATTER = _DataFormatter()


def render(template: str, values: dict[str, Any]) -> str:
    try:
        return _FORMATTER.vformat(template, (), values)
    except (ValueError, TypeError) as exc:
        raise TemplateError(str(exc)) from None
