import { Play, Plus, Trash2 } from "lucide-react";
import { useState } from "react";
import { useNavigate } from "react-router-dom";
import { api, call } from "../api/client";
import { ApiError, describeError, formatPath, type FieldError } from "../api/errors";
import { checkSteps, splitServerProblems, type Problem } from "../lib/dag";
import { DagView } from "./DagView";
import { EXAMPLE, blankStep, parseText, toText, type PipelineDef, type StepDef, type TextMode } from "./pipelineDefs";

type Mode = "form" | TextMode;

function errorsFor(step: number, field: string, client: Problem[], server: FieldError[], serverProblems: Problem[]): string[] {
  return [
    ...client.filter((p) => p.step === step && p.field === field).map((p) => p.message),
    ...server.filter((e) => e.path[0] === "steps" && e.path[1] === step && e.path[2] === field).map((e) => e.message),
    ...(field === "prompt_template" ? serverProblems.filter((p) => p.step === step).map((p) => p.message) : []),
  ];
}

function FieldErrors({ messages }: { messages: string[] }) {
  if (!messages.length) return null;
  return (
    <ul className="field-errors" data-testid="field-error">
      {messages.map((m, i) => (
        <li key={i}>{m}</li>
      ))}
    </ul>
  );
}

export function PipelineEditor({ initial }: { initial?: PipelineDef }) {
  const navigate = useNavigate();
  const [def, setDef] = useState<PipelineDef>(initial ?? EXAMPLE);
  const [mode, setMode] = useState<Mode>("form");
  const [text, setText] = useState("");
  const [textError, setTextError] = useState<{ error: string; line: number | null } | null>(null);
  const [inputText, setInputText] = useState(JSON.stringify((initial ?? EXAMPLE).input ?? {}, null, 2));
  const [inputError, setInputError] = useState<string | null>(null);
  const [server, setServer] = useState<{ fields: FieldError[]; problems: Problem[]; message: string } | null>(null);
  const [busy, setBusy] = useState(false);
  const formable = def.steps.every((s) => (s.kind ?? "generate") === "generate");
  const client = checkSteps(def.steps);

  const switchMode = (next: Mode) => {
    if (next === mode) return;
    let current = def;
    if (mode !== "form") {
      const parsed = parseText(text, mode);
      if (!parsed.def) {
        setTextError({ error: parsed.error ?? "invalid", line: parsed.line });
        return;
      }
      current = parsed.def;
      setDef(current);
      setInputText(JSON.stringify(current.input ?? {}, null, 2));
    }
    if (next !== "form") setText(toText(current, next));
    setTextError(null);
    setMode(next);
  };

  const updateStep = (i: number, patch: Partial<StepDef>) => {
    setDef((d) => ({ ...d, steps: d.steps.map((s, j) => (j === i ? { ...s, ...patch } : s)) }));
    setServer(null);
  };
  const renameStep = (i: number, name: string) => {
    setDef((d) => {
      const old = d.steps[i]?.name;
      return { ...d, steps: d.steps.map((s, j) => (j === i ? { ...s, name } : { ...s, depends_on: (s.depends_on ?? []).map((x) => (x === old ? name : x)) })) };
    });
    setServer(null);
  };
  const removeStep = (i: number) => {
    setDef((d) => {
      const gone = d.steps[i]?.name;
      return { ...d, steps: d.steps.filter((_, j) => j !== i).map((s) => ({ ...s, depends_on: (s.depends_on ?? []).filter((x) => x !== gone) })) };
    });
  };

  async function runIt() {
    let body = def;
    if (mode !== "form") {
      const parsed = parseText(text, mode);
      if (!parsed.def) {
        setTextError({ error: parsed.error ?? "invalid", line: parsed.line });
        return;
      }
      body = parsed.def;
      setDef(body);
    } else {
      try {
        body = { ...def, input: JSON.parse(inputText || "{}") };
        setInputError(null);
      } catch (err) {
        setInputError(`Input is not valid JSON: ${err instanceof Error ? err.message : String(err)}`);
        return;
      }
    }
    setBusy(true);
    setServer(null);
    try {
      const run = await call(api.POST("/api/pipelines/runs", { body }));
      navigate(`/pipelines/runs/${run.run_id}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 422) {
        // Errors with a location attach to their field; a problem's whole-request errors
        // (empty location) are split by step name from its detail.
        const located = err.fieldErrors.filter((f) => f.path.length > 0);
        setServer({
          fields: located,
          problems: located.length ? [] : splitServerProblems(err.message, body.steps.map((s) => s.name)),
          message: err.message,
        });
      } else {
        setServer({ fields: [], problems: [], message: describeError(err) });
      }
    } finally {
      setBusy(false);
    }
  }

  const serverFields = server?.fields ?? [];
  const serverProblems = server?.problems ?? [];
  const unplaced = [
    ...client.filter((p) => p.step === null).map((p) => p.message),
    ...serverFields.filter((e) => !(e.path[0] === "steps" && typeof e.path[1] === "number" && mode === "form")).map((e) => `${formatPath(e.path) || "pipeline"}: ${e.message}`),
    ...serverProblems.filter((p) => p.step === null || mode !== "form").map((p) => p.message),
    ...(server && !server.fields.length && !server.problems.length ? [server.message] : []),
  ];

  return (
    <div className="stack">
      <section className="card">
        <div className="row">
          <h2 className="grow">Define a pipeline</h2>
          <div className="segmented" role="tablist">
            {(["form", "yaml", "json"] as Mode[]).map((m) => (
              <button key={m} role="tab" aria-selected={mode === m} className={mode === m ? "on" : ""} onClick={() => switchMode(m)} data-testid={`mode-${m}`}>
                {m === "form" ? "Form" : m.toUpperCase()}
              </button>
            ))}
          </div>
          <button className="btn btn-ghost" onClick={() => { setDef(EXAMPLE); setInputText(JSON.stringify(EXAMPLE.input, null, 2)); if (mode !== "form") setText(toText(EXAMPLE, mode)); setServer(null); }}>
            Load example
          </button>
          <button className="btn btn-primary" onClick={() => void runIt()} disabled={busy || (mode === "form" && client.length > 0)} data-testid="pipeline-run">
            {busy ? "Starting…" : (<><Play size={14} /> Run pipeline</>)}
          </button>
        </div>
        <p className="muted small">
          Each step calls a language model on llm_q. A template sees the input (<code>{"{topic}"}</code>) and earlier steps' answers (<code>{"{facts}"}</code>,{" "}
          <code>{"{facts[response]}"}</code>); independent steps run in parallel.
        </p>
        {unplaced.length ? (
          <div className="callout callout-bad" data-testid="pipeline-errors">
            <strong>Fix before running:</strong>
            <ul>
              {unplaced.map((m, i) => (
                <li key={i}>{m}</li>
              ))}
            </ul>
          </div>
        ) : null}
        {mode === "form" ? (
          formable ? (
            <>
              <label className="field">
                <span>Input (JSON object)</span>
                <textarea className="code-input" rows={3} value={inputText} onChange={(e) => setInputText(e.target.value)} spellCheck={false} data-testid="pipeline-input" />
                {inputError ? <FieldErrors messages={[inputError]} /> : null}
              </label>
              <ol className="steps">
                {def.steps.map((s, i) => (
                  <li key={i} className="step-card" data-testid="step-form">
                    <div className="row wrap">
                      <span className="step-no">{i + 1}</span>
                      <label className="field-inline">
                        name
                        <input value={s.name} onChange={(e) => renameStep(i, e.target.value)} className="mono" data-testid="step-name" />
                      </label>
                      <label className="field-inline">
                        model
                        <input value={s.model ?? ""} placeholder="default" onChange={(e) => updateStep(i, { model: e.target.value || null })} />
                      </label>
                      <label className="check">
                        <input type="checkbox" checked={!!s.json_mode} onChange={(e) => updateStep(i, { json_mode: e.target.checked })} /> JSON
                      </label>
                      <label className="check">
                        <input type="checkbox" checked={!!s.optional} onChange={(e) => updateStep(i, { optional: e.target.checked })} /> optional
                      </label>
                      <span className="grow" />
                      <button className="icon-btn danger" title="Remove step" onClick={() => removeStep(i)} disabled={def.steps.length <= 1}>
                        <Trash2 size={14} />
                      </button>
                    </div>
                    <FieldErrors messages={errorsFor(i, "name", client, serverFields, serverProblems)} />
                    <textarea className="code-input" rows={3} value={s.prompt_template} onChange={(e) => updateStep(i, { prompt_template: e.target.value })} data-testid="step-template" />
                    <FieldErrors messages={errorsFor(i, "prompt_template", client, serverFields, serverProblems)} />
                    <div className="row wrap deps">
                      <span className="muted small">depends on</span>
                      {def.steps.filter((o) => o.name !== s.name).map((o) => {
                        const on = (s.depends_on ?? []).includes(o.name);
                        return (
                          <button key={o.name} className={`chip chip-toggle ${on ? "on" : ""}`} onClick={() => updateStep(i, { depends_on: on ? (s.depends_on ?? []).filter((x) => x !== o.name) : [...(s.depends_on ?? []), o.name] })}>
                            {on ? "✓ " : ""}
                            {o.name}
                          </button>
                        );
                      })}
                    </div>
                    <FieldErrors messages={errorsFor(i, "depends_on", client, serverFields, serverProblems)} />
                  </li>
                ))}
              </ol>
              <button className="btn btn-ghost" onClick={() => setDef((d) => ({ ...d, steps: [...d.steps, blankStep(d.steps)] }))}>
                <Plus size={15} /> Add step
              </button>
            </>
          ) : (
            <div className="callout callout-warn">This pipeline has group or chord steps: edit it as YAML or JSON.</div>
          )
        ) : (
          <div className="text-editor">
            <textarea
              className={`code-input tall ${textError ? "invalid" : ""}`}
              value={text}
              onChange={(e) => {
                setText(e.target.value);
                const parsed = parseText(e.target.value, mode);
                setTextError(parsed.def ? null : { error: parsed.error ?? "invalid", line: parsed.line });
                setServer(null);
              }}
              spellCheck={false}
              data-testid="pipeline-text"
              rows={18}
            />
            {textError ? (
              <div className="field-errors" data-testid="text-error">
                {textError.error}
              </div>
            ) : null}
          </div>
        )}
      </section>
      {mode === "form" && formable && client.length === 0 ? (
        <section className="card">
          <h3>Preview</h3>
          <DagView steps={def.steps} statuses={{}} />
        </section>
      ) : null}
    </div>
  );
}
