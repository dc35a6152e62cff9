/** Pipeline definitions as the editor holds them, the example, and text <-> object. */
import YAML from "yaml";
import type { Schemas } from "../api/client";

export type PipelineDef = Schemas["PipelineRunRequest"];
export type StepDef = Schemas["StepDef"];

export const EXAMPLE: PipelineDef = {
  input: { topic: "dendritic spikes in layer 5 pyramidal cells" },
  steps: [
    { name: "facts", prompt_template: "List five key facts about {topic}." },
    { name: "questions", prompt_template: "Given these facts:\n{facts}\n\nAsk three open research questions about {topic}.", depends_on: ["facts"] },
    {
      name: "summary",
      prompt_template: "Write a one-paragraph summary for a newcomer.\nFacts:\n{facts}\nOpen questions:\n{questions}",
      depends_on: ["facts", "questions"],
    },
  ],
};

export function blankStep(existing: StepDef[]): StepDef {
  let n = existing.length + 1;
  while (existing.some((s) => s.name === `step_${n}`)) n += 1;
  const last = existing[existing.length - 1];
  return { name: `step_${n}`, prompt_template: last ? `Continue from:\n{${last.name}}` : "Write about {topic}.", depends_on: last ? [last.name] : [] };
}

export type TextMode = "yaml" | "json";

export function toText(def: PipelineDef, mode: TextMode): string {
  return mode === "json" ? JSON.stringify(def, null, 2) + "\n" : YAML.stringify(def, { lineWidth: 0 });
}

export interface ParseResult {
  def: PipelineDef | null;
  error: string | null;
  line: number | null;
}

export function parseText(text: string, mode: TextMode): ParseResult {
  if (mode === "json") {
    try {
      return shape(JSON.parse(text));
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      const pos = /position (\d+)/.exec(message);
      const line = pos ? text.slice(0, Number(pos[1])).split("\n").length : null;
      return { def: null, error: `JSON: ${message}`, line };
    }
  }
  const doc = YAML.parseDocument(text, { prettyErrors: true });
  if (doc.errors.length) {
    const first = doc.errors[0];
    const line = first?.linePos?.[0]?.line ?? null;
    return { def: null, error: `YAML${line ? ` line ${line}` : ""}: ${first?.message.split("\n")[0] ?? "invalid"}`, line };
  }
  return shape(doc.toJS());
}

function shape(value: unknown): ParseResult {
  if (!value || typeof value !== "object" || Array.isArray(value)) return { def: null, error: "The pipeline must be an object with `steps` (and optionally `input`).", line: null };
  const v = value as Record<string, unknown>;
  if (!Array.isArray(v.steps)) return { def: null, error: "`steps` must be a list of steps.", line: null };
  return { def: v as unknown as PipelineDef, error: null, line: null };
}
