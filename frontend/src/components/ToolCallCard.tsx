import { Brain, ChevronDown, ChevronRight, Code2, Sparkles, Wrench } from "lucide-react";
import { useState } from "react";
import { TERMINAL, type ToolCallView } from "../lib/toolState";
import { ProgressBar, StatusBadge } from "./StatusBadge";
import { TraceId } from "./TraceId";
import { Section, ToolOutput } from "./ToolOutput";

const TITLES: Record<string, string> = {
  run_python: "Python",
  circuit_population_analysis: "Circuit analysis",
  llm_generate: "Language model",
};

const ICONS: Record<string, typeof Wrench> = { run_python: Code2, circuit_population_analysis: Brain, llm_generate: Sparkles };

type Obj = Record<string, unknown>;

function Inputs({ name, args }: { name: string; args: unknown }) {
  if (!args || typeof args !== "object") return args ? <pre className="code">{String(args)}</pre> : null;
  const a = args as Obj;
  if (name === "run_python" && typeof a.code === "string") {
    return (
      <Section title="Code">
        <pre className="code" data-testid="tool-code">{a.code}</pre>
      </Section>
    );
  }
  if (name === "circuit_population_analysis") {
    return (
      <Section title="Question">
        <p className="question">
          {String(a.question ?? "")} <span className="muted small">· dataset {String(a.dataset_id ?? "")}</span>
        </p>
        {typeof a.sql === "string" ? <pre className="code">{a.sql}</pre> : null}
      </Section>
    );
  }
  if (name === "llm_generate" && typeof a.prompt === "string") {
    return (
      <Section title="Prompt">
        <p className="question">{a.prompt}</p>
      </Section>
    );
  }
  return (
    <Section title="Arguments">
      <pre className="code">{JSON.stringify(args, null, 2)}</pre>
    </Section>
  );
}

function waitingText(view: ToolCallView): string {
  const w = view.waiting;
  if (!w) return "waiting for your fair share…";
  const share = w.cap ? ` (you already have ${w.cap} running on ${w.queue})` : "";
  return `waiting: ${w.ahead} ahead of you${share}`;
}

/** One tool call, live: queued → running (progress) → done / error / cancelled. */
export function ToolCallCard({ view, onCancel }: { view: ToolCallView; onCancel?: () => void }) {
  const active = !TERMINAL.has(view.state);
  const [open, setOpen] = useState(true);
  const title = TITLES[view.name] ?? view.name;
  const Icon = ICONS[view.name] ?? Wrench;
  return (
    <div className={`tool-card tool-${view.state}`} data-testid="tool-card" data-state={view.state} data-history={view.history.join(",")}>
      <div className="tool-head">
        <button className="tool-toggle" onClick={() => setOpen((o) => !o)} aria-expanded={open}>
          {open ? <ChevronDown size={14} className="muted" /> : <ChevronRight size={14} className="muted" />}
          <Icon size={16} className="tool-icon" />
          <span className="tool-title">{title}</span>
          <span className="tool-name mono">{view.name}</span>
        </button>
        <span className="grow" />
        {view.taskId ? <span className="mono muted small" title={view.taskId}>task {view.taskId.slice(0, 8)}</span> : null}
        <TraceId id={view.traceId} />
        <StatusBadge state={view.state} testId="tool-state" />
        {active && onCancel && view.taskId ? (
          <button className="btn btn-ghost btn-sm" onClick={onCancel} title="Cancel this tool call">
            Cancel
          </button>
        ) : null}
      </div>
      {active ? (
        <div className="tool-live">
          <ProgressBar current={view.progress?.current ?? null} total={view.progress?.total ?? null} label={`${title} progress`} />
          <span className="muted small">
            {view.state === "running"
              ? view.progress?.message || `running${view.worker ? ` on ${view.worker}` : ""}…`
              : view.state === "waiting"
                ? waitingText(view)
                : view.state === "queued"
                  ? "waiting for a worker…"
                  : "starting…"}
          </span>
        </div>
      ) : null}
      {open ? (
        <div className="tool-body">
          <Inputs name={view.name} args={view.arguments} />
          {view.error && view.state !== "done" ? (
            <div className={`callout ${view.state === "cancelled" ? "callout-warn" : "callout-bad"}`} data-testid="tool-error">
              <strong>{view.error.type}</strong>: {view.error.message}
            </div>
          ) : null}
          <ToolOutput name={view.name} output={view.output} />
        </div>
      ) : null}
    </div>
  );
}
