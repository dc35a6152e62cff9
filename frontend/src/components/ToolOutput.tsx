/** How each tool's output is shown: code runs (stdout, errors, figures), analysis tables,
 * model answers; anything else as JSON. Shared by chat cards, the code runner and datasets. */
import { DataTable } from "./DataTable";
import { Figures, type FigureOut } from "./Figures";
import { Markdown } from "./Markdown";

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => !!v && typeof v === "object" && !Array.isArray(v);

export function PythonOutput({ output }: { output: Obj }) {
  const error = isObj(output.error) ? output.error : null;
  const figures = Array.isArray(output.figures) ? (output.figures as FigureOut[]) : [];
  const stdout = typeof output.stdout === "string" ? output.stdout : "";
  const stderr = typeof output.stderr === "string" ? output.stderr : "";
  const notes = Array.isArray(output.notes) ? (output.notes as string[]) : [];
  return (
    <div className="tool-output" data-testid="python-output">
      {error ? (
        <div className="callout callout-bad" data-testid="python-error">
          <strong>{String(error.type)}</strong>
          {typeof error.line === "number" ? <span className="muted"> (line {error.line})</span> : null}: {String(error.message)}
        </div>
      ) : null}
      {stdout ? (
        <Section title={`stdout${output.stdout_truncated ? " (truncated)" : ""}`}>
          <pre className="console" data-testid="stdout">{stdout}</pre>
        </Section>
      ) : null}
      {stderr && !error ? (
        <Section title="stderr">
          <pre className="console console-err">{stderr}</pre>
        </Section>
      ) : null}
      {typeof output.last_expr === "string" ? (
        <Section title="result">
          <pre className="console" data-testid="last-expr">{output.last_expr}</pre>
        </Section>
      ) : null}
      <Figures figures={figures} />
      {!stdout && !stderr && !error && !figures.length && output.last_expr == null ? <p className="muted small">No output.</p> : null}
      {typeof output.session_id === "string" ? (
        <p className="muted small" data-testid="python-session">
          session {output.session_id.slice(0, 8)}
          {typeof output.worker === "string" ? ` on ${output.worker}` : ""}
          {output.restored ? (
            <span className="badge" data-testid="session-restored" title={notes.find((n) => n.startsWith("session restored on")) ?? "restored from its snapshot"}>
              {" "}
              restored
            </span>
          ) : null}
        </p>
      ) : null}
      {notes.length ? <p className="muted small">{notes.join(" · ")}</p> : null}
      {typeof output.duration_s === "number" ? (
        <p className="muted small">
          ran in {output.duration_s.toFixed(2)} s{typeof output.backend === "string" ? ` · sandbox: ${output.backend}` : ""}
        </p>
      ) : null}
    </div>
  );
}

export function AnalysisOutput({ output }: { output: Obj }) {
  const error = isObj(output.error) ? output.error : null;
  const columns = Array.isArray(output.columns) ? (output.columns as { name: string; type?: string }[]) : [];
  const rows = Array.isArray(output.rows) ? (output.rows as unknown[][]) : [];
  const usage = isObj(output.usage) ? output.usage : null;
  return (
    <div className="tool-output" data-testid="analysis-output">
      {typeof output.explanation === "string" && output.explanation ? <p>{output.explanation}</p> : null}
      {typeof output.sql === "string" ? (
        <Section title="SQL">
          <pre className="code" data-testid="analysis-sql">{output.sql}</pre>
        </Section>
      ) : null}
      {error ? (
        <div className="callout callout-bad" data-testid="analysis-error">
          <strong>{String(error.type)}</strong>: {String(error.message)}
        </div>
      ) : null}
      {columns.length ? (
        <DataTable
          columns={columns}
          rows={rows}
          totalRows={typeof output.row_count === "number" ? output.row_count : rows.length}
          downloadUrl={typeof output.result_url === "string" ? output.result_url : null}
          caption={output.truncated ? "row cap reached" : undefined}
          testId="result-table"
        />
      ) : null}
      {usage && Number(usage.total_tokens) > 0 ? (
        <p className="muted small">
          {String(output.model ?? "model")} · {Number(usage.prompt_tokens)} in / {Number(usage.completion_tokens)} out tokens
        </p>
      ) : null}
    </div>
  );
}

export function LlmOutput({ output }: { output: Obj }) {
  return (
    <div className="tool-output">
      <Markdown text={String(output.response ?? "")} />
      <p className="muted small">
        {String(output.model ?? "")}
        {output.cache_hit ? " · cached" : ""}
      </p>
    </div>
  );
}

export function ToolOutput({ name, output }: { name: string; output: unknown }) {
  if (output === undefined || output === null) return null;
  if (isObj(output)) {
    if (name === "run_python" || "stdout" in output) return <PythonOutput output={output} />;
    if (name === "circuit_population_analysis" || ("columns" in output && "rows" in output)) return <AnalysisOutput output={output} />;
    if (name === "llm_generate" || "response" in output) return <LlmOutput output={output} />;
  }
  return <pre className="code">{JSON.stringify(output, null, 2)}</pre>;
}

export function Section({ title, children }: { title: string; children: React.ReactNode }) {
  return (
    <div className="section">
      <div className="section-title">{title}</div>
      {children}
    </div>
  );
}
