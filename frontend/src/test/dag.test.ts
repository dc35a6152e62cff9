import { describe, expect, it } from "vitest";
import { NODE_W, checkSteps, findCycle, layoutDag, splitServerProblems } from "../lib/dag";
import { EXAMPLE, parseText, toText } from "../pages/pipelineDefs";

describe("pipeline checks", () => {
  it("accepts the example and finds the usual mistakes", () => {
    expect(checkSteps(EXAMPLE.steps)).toEqual([]);
    const problems = checkSteps([
      { name: "a" },
      { name: "a", depends_on: ["zz"] },
      { name: "9x" },
      { name: "b", depends_on: ["b"] },
    ]);
    expect(problems.map((p) => [p.step, p.field, p.message])).toEqual([
      [1, "name", "duplicate step name a"],
      [2, "name", "letters, digits and _ only; not starting with a digit"],
      [1, "depends_on", "depends on unknown step zz"],
      [3, "depends_on", "a step cannot depend on itself"],
    ]);
  });

  it("reports a cycle with its path", () => {
    expect(findCycle([{ name: "a", depends_on: ["c"] }, { name: "b", depends_on: ["a"] }, { name: "c", depends_on: ["b"] }])).toEqual(["a", "c", "b", "a"]);
    expect(findCycle(EXAMPLE.steps)).toBeNull();
  });

  it("attributes the app's joined 422 problems to steps", () => {
    const out = splitServerProblems("step summary prompt_template: {nowhere} is unknown; duplicate step name(s) ['a']", ["facts", "summary"]);
    expect(out).toEqual([
      { step: 1, field: null, message: "step summary prompt_template: {nowhere} is unknown" },
      { step: null, field: null, message: "duplicate step name(s) ['a']" },
    ]);
  });
});

describe("DAG layout", () => {
  it("puts each step right of everything it depends on; parallel steps share a column", () => {
    const layout = layoutDag([{ name: "a" }, { name: "b" }, { name: "c", depends_on: ["a", "b"] }, { name: "d", depends_on: ["c", "a"] }]);
    const at = Object.fromEntries(layout.nodes.map((n) => [n.name, n]));
    expect([at.a?.layer, at.b?.layer, at.c?.layer, at.d?.layer]).toEqual([0, 0, 1, 2]);
    expect(at.a?.x).toBe(at.b?.x);
    expect(at.a?.y).not.toBe(at.b?.y);
    expect(at.c!.x).toBeGreaterThan(at.a!.x + NODE_W);
    expect(layout.edges.map((e) => `${e.from}>${e.to}`).sort()).toEqual(["a>c", "a>d", "b>c", "c>d"]);
    expect(layout.width).toBeGreaterThan(3 * NODE_W);
  });

  it("survives a cycle instead of looping", () => {
    const layout = layoutDag([{ name: "a", depends_on: ["b"] }, { name: "b", depends_on: ["a"] }]);
    expect(layout.nodes).toHaveLength(2);
  });
});

describe("pipeline text", () => {
  it("round-trips through YAML and JSON", () => {
    for (const mode of ["yaml", "json"] as const) {
      const back = parseText(toText(EXAMPLE, mode), mode);
      expect(back.error).toBeNull();
      expect(back.def).toEqual(EXAMPLE);
    }
  });

  it("reports YAML and JSON syntax errors with a line", () => {
    const yaml = parseText("steps:\n  - name: a\n    prompt_template: [unclosed\n", "yaml");
    expect(yaml.def).toBeNull();
    expect(yaml.error).toMatch(/^YAML/);
    const json = parseText('{\n  "steps": [\n    {"name": }\n  ]\n}', "json");
    expect(json.def).toBeNull();
    expect(json.error).toMatch(/^JSON/);
    expect(parseText("steps: 3", "yaml").error).toBe("`steps` must be a list of steps.");
  });
});
