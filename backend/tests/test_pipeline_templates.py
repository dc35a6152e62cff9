"""Pipeline templates are data, not code: only ``{name}`` and ``{name[key]...}`` are allowed.

Everything else ``str.format`` can do (attributes, positional fields, conversions, format specs
that allocate) is a 422 problem naming the template's field, before anything runs.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from corral.app.pipelines.dag import render
from corral.app.pipelines.templates import TemplateError, template_fields
from tests.support.fake_openai import FakeOpenAI

BAD = [
    ("{a.__class__}", "attribute access"),
    ("{a[response].__class__.__mro__}", "attribute access"),
    ("{a[response]:>999999999}", "format specs"),
    ("{q:,}", "format specs"),
    ("{0}", "positional"),
    ("{}", "positional"),
    ("{q!r}", "conversions"),
    ("{a[response]!a}", "conversions"),
    ("{a[__class__ ]}", "not a plain key"),
    ("{a[x][y][z][w][v]}", "at most 4"),
    ("{a[response]:{q}}", "format specs"),
    ("{", "literal brace"),
]


@pytest.mark.parametrize(("template", "why"), BAD)
def test_code_like_templates_are_refused(template: str, why: str) -> None:
    with pytest.raises(TemplateError, match=why):
        template_fields(template)


def test_documented_forms_render_as_data() -> None:
    values = {"q": "Paris", "a": {"response": "r", "parsed": {"city": "Lyon", "n": [1, 2]}}}
    template = "{q} {a[response]} {a[parsed][city]} {a[parsed][n][1]} {a[parsed]} {{x}}"
    assert [r.text for r in template_fields(template)] == [
        "q", "a[response]", "a[parsed][city]", "a[parsed][n][1]", "a[parsed]",
    ]  # fmt: skip
    assert render(template, values) == 'Paris r Lyon 2 {"city": "Lyon", "n": [1, 2]} {x}'


def test_render_refuses_specs_even_if_validation_was_skipped() -> None:
    with pytest.raises(TemplateError):
        render("{q:>999999999}", {"q": "x"})
    with pytest.raises(TemplateError):
        render("{q!r}", {"q": "x"})


@pytest.mark.parametrize(
    ("where", "steps"),
    [
        (
            ["body", "steps", 1, "prompt_template"],
            [{"name": "a", "prompt_template": "{q}"},
             {"name": "b", "prompt_template": "{a[response]:>999999999}", "depends_on": ["a"]}],
        ),
        (["body", "steps", 0, "prompt_template"], [{"name": "a", "prompt_template": "{q.__class__}"}]),  # noqa: E501
        (
            ["body", "steps", 0, "variants", 0, "prompt_template"],
            [{"name": "a", "kind": "group", "prompt_template": "{q}",
              "variants": [{"prompt_template": "{0}"}]}],
        ),
        (
            ["body", "steps", 0, "combine", "prompt_template"],
            [{"name": "a", "kind": "chord", "prompt_template": "{q}", "variants": [{}],
              "combine": {"prompt_template": "{variants!r}"}}],
        ),
    ],
)  # fmt: skip
async def test_bad_template_is_a_422_problem_naming_the_field(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI, where: list[Any], steps: list[dict[str, Any]]
) -> None:
    resp = await api.post("/api/pipelines/runs", json={"steps": steps, "input": {"q": "x"}})
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    errors = resp.json()["errors"]
    assert any(e["loc"] == where for e in errors), errors
    assert fake_llm.requests() == []
