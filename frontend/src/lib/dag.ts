/** Pipeline definitions: client-side checks (the same rules the app enforces, caught before a
 * round trip) and a layered left-to-right layout for the DAG view. */

export interface StepLike {
  name: string;
  depends_on?: string[];
}

export const STEP_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

export interface Problem {
  step: number | null;
  field: string | null;
  message: string;
}

export function checkSteps(steps: StepLike[]): Problem[] {
  const problems: Problem[] = [];
  const seen = new Map<string, number>();
  steps.forEach((s, i) => {
    if (!s.name) problems.push({ step: i, field: "name", message: "a step needs a name" });
    else if (!STEP_NAME.test(s.name)) problems.push({ step: i, field: "name", message: "letters, digits and _ only; not starting with a digit" });
    else if (seen.has(s.name)) problems.push({ step: i, field: "name", message: `duplicate step name ${s.name}` });
    seen.set(s.name, i);
  });
  steps.forEach((s, i) => {
    for (const dep of s.depends_on ?? []) {
      if (dep === s.name) problems.push({ step: i, field: "depends_on", message: "a step cannot depend on itself" });
      else if (!seen.has(dep)) problems.push({ step: i, field: "depends_on", message: `depends on unknown step ${dep}` });
    }
  });
  const cycle = findCycle(steps);
  if (cycle) problems.push({ step: null, field: "depends_on", message: `dependency cycle: ${cycle.join(" → ")}` });
  return problems;
}

export function findCycle(steps: StepLike[]): string[] | null {
  const deps = new Map(steps.map((s) => [s.name, s.depends_on ?? []]));
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const visit = (n: string): string[] | null => {
    if (state.get(n) === 2) return null;
    if (state.get(n) === 1) return [...stack.slice(stack.indexOf(n)), n];
    state.set(n, 1);
    stack.push(n);
    for (const d of deps.get(n) ?? []) {
      if (!deps.has(d) || d === n) continue; // self-dependency: reported on its own
      const found = visit(d);
      if (found) return found;
    }
    stack.pop();
    state.set(n, 2);
    return null;
  };
  for (const s of steps) {
    const found = visit(s.name);
    if (found) return found;
  }
  return null;
}

export interface LaidNode {
  name: string;
  layer: number;
  x: number;
  y: number;
}

export interface Layout {
  nodes: LaidNode[];
  edges: { from: string; to: string; path: string }[];
  width: number;
  height: number;
}

export const NODE_W = 188;
export const NODE_H = 64;
const GAP_X = 72;
const GAP_Y = 24;
const PAD = 16;
const ARC = 44;

/** Layer = longest path from a root; within a layer, order by the parents' average position. */
export function layoutDag(steps: StepLike[]): Layout {
  const names = new Set(steps.map((s) => s.name));
  const deps = new Map(steps.map((s) => [s.name, (s.depends_on ?? []).filter((d) => names.has(d) && d !== s.name)]));
  const layer = new Map<string, number>();
  const depth = (n: string, seen: Set<string>): number => {
    const known = layer.get(n);
    if (known !== undefined) return known;
    if (seen.has(n)) return 0; // a cycle: checkSteps reports it
    seen.add(n);
    const parents = deps.get(n) ?? [];
    const d = parents.length ? 1 + Math.max(...parents.map((p) => depth(p, seen))) : 0;
    layer.set(n, d);
    return d;
  };
  steps.forEach((s) => depth(s.name, new Set()));
  const layers: string[][] = [];
  steps.forEach((s) => {
    const l = layer.get(s.name) ?? 0;
    (layers[l] ??= []).push(s.name);
  });
  const rowOf = new Map<string, number>();
  layers.forEach((names_, l) => {
    if (l > 0) {
      const score = (n: string) => {
        const ps = deps.get(n) ?? [];
        return ps.length ? ps.reduce((a, p) => a + (rowOf.get(p) ?? 0), 0) / ps.length : 0;
      };
      names_.sort((a, b) => score(a) - score(b));
    }
    names_.forEach((n, i) => rowOf.set(n, i));
  });
  const tallest = Math.max(1, ...layers.map((l) => l?.length ?? 0));
  // Edges that skip a layer arc over the nodes in between: leave room above for them.
  const skips = steps.some((s) => (deps.get(s.name) ?? []).some((d) => (layer.get(s.name) ?? 0) - (layer.get(d) ?? 0) > 1));
  const top0 = skips ? ARC : 0;
  const height = top0 + PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  const nodes: LaidNode[] = [];
  layers.forEach((names_, l) => {
    const colHeight = names_.length * NODE_H + (names_.length - 1) * GAP_Y;
    const top = top0 + (height - top0 - colHeight) / 2;
    names_.forEach((n, i) => nodes.push({ name: n, layer: l, x: PAD + l * (NODE_W + GAP_X), y: top + i * (NODE_H + GAP_Y) }));
  });
  const at = new Map(nodes.map((n) => [n.name, n]));
  const edges = steps.flatMap((s) =>
    (deps.get(s.name) ?? []).map((d) => {
      const a = at.get(d) as LaidNode;
      const b = at.get(s.name) as LaidNode;
      if (b.layer - a.layer > 1) {
        const x1 = a.x + NODE_W - 28;
        const x2 = b.x + 28;
        const lift = Math.min(a.y, b.y) - ARC + 6;
        return { from: d, to: s.name, path: `M${x1},${a.y} C${x1},${lift} ${x2},${lift} ${x2},${b.y}` };
      }
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x;
      const y2 = b.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      return { from: d, to: s.name, path: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}` };
    }),
  );
  const width = PAD * 2 + Math.max(1, layers.length) * NODE_W + Math.max(0, layers.length - 1) * GAP_X;
  return { nodes, edges, width, height };
}

/** The app's 422 for an invalid pipeline is "problem; problem; ..." naming steps: split them. */
export function splitServerProblems(message: string, stepNames: string[]): Problem[] {
  return message
    .split(/;\s+/)
    .filter(Boolean)
    .map((text) => {
      const m = /^step (\w+)/.exec(text);
      const index = m ? stepNames.indexOf(m[1] as string) : -1;
      return { step: index >= 0 ? index : null, field: null, message: text };
    });
}
