import { Play, Square } from "lucide-react";
import { useEffect, useRef, useState } from "react";
import { describeError } from "../api/errors";
import { PageHeader } from "../components/Layout";
import { SessionView, useCodeSession } from "../components/SessionRunner";
import { ProgressBar, StatusBadge } from "../components/StatusBadge";
import { PythonOutput } from "../components/ToolOutput";
import { TERMINAL } from "../lib/toolState";
import { useToolRun } from "../lib/useToolRun";

const EXAMPLES: Record<string, string> = {
  "Damped sine (plot)": `import numpy as np
import matplotlib.pyplot as plt

t = np.linspace(0, 10, 500)
y = np.exp(-t / 3) * np.sin(2 * np.pi * t)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(t, y, color="#4f46e5", lw=2)
ax.set(title="Damped sine", xlabel="t (s)", ylabel="amplitude")
ax.grid(alpha=.3)
print("peak:", round(y.max(), 3))
`,
  "pandas summary": `import numpy as np
import pandas as pd

rng = np.random.default_rng(7)
df = pd.DataFrame({"layer": rng.choice(["L2/3", "L4", "L5", "L6"], 500),
                   "rate_hz": rng.gamma(2.0, 3.0, 500)})
print(df.groupby("layer").rate_hz.describe().round(2))
df.rate_hz.mean()
`,
  "Slow loop (try Stop)": `import time
for i in range(60):
    print("tick", i, flush=True)
    time.sleep(1)
`,
  "An error": `values = [1, 2, 3]
print("about to fail")
values[10]
`,
};

const FIRST = Object.values(EXAMPLES)[0] as string;

/** Write Python, run it on python_q (sandboxed), see stdout, errors and figures — no model involved. */
export function CodePage() {
  const [code, setCode] = useState(() => localStorage.getItem("corral.code") ?? FIRST);
  const { view, error, connection, busy: toolBusy, run, cancel } = useToolRun();
  const [sessionMode, setSessionMode] = useState(() => localStorage.getItem("corral.codeMode") === "session");
  const session = useCodeSession();
  const busy = sessionMode ? session.busy : toolBusy;
  const gutter = useRef<HTMLDivElement>(null);
  const lines = code.split("\n").length;
  const active = !sessionMode && view && !TERMINAL.has(view.state);
  const lastCell = session.cells[session.cells.length - 1]?.response.output as Record<string, unknown> | undefined;
  const output = sessionMode ? (lastCell ?? null) : view?.output && typeof view.output === "object" ? (view.output as Record<string, unknown>) : null;
  const errorLine = output && output.error && typeof (output.error as { line?: unknown }).line === "number" ? (output.error as { line: number }).line : null;

  useEffect(() => {
    const t = setTimeout(() => localStorage.setItem("corral.code", code), 300);
    return () => clearTimeout(t);
  }, [code]);

  const start = () => void (sessionMode ? session.run(code) : run("run_python", { code, timeout_s: 120 }));
  const toggleMode = (on: boolean) => {
    setSessionMode(on);
    localStorage.setItem("corral.codeMode", on ? "session" : "single");
  };

  return (
    <div className="page page-wide">
      <PageHeader
        title="Code runner"
        subtitle="Python with numpy, pandas, scipy and matplotlib, run in a sandbox on the python_q workers. Figures left open are shown below."
        actions={
          <>
            <label className="small row" title="Runs share one Python session: variables, imports and loaded data stay between runs">
              <input type="checkbox" checked={sessionMode} onChange={(e) => toggleMode(e.target.checked)} data-testid="session-mode" /> Session
            </label>
            <select aria-label="Examples" onChange={(e) => e.target.value && setCode(EXAMPLES[e.target.value] ?? code)} value="" data-testid="examples">
              <option value="">Examples…</option>
              {Object.keys(EXAMPLES).map((k) => (
                <option key={k}>{k}</option>
              ))}
            </select>
            {active ? (
              <button className="btn btn-danger" onClick={() => void cancel()} data-testid="code-stop">
                <Square size={13} fill="currentColor" /> Stop
              </button>
            ) : (
              <button className="btn btn-primary" onClick={start} disabled={Boolean(busy) || !code.trim()} data-testid="code-run">
                <Play size={14} fill="currentColor" /> Run <kbd>Ctrl ↵</kbd>
              </button>
            )}
          </>
        }
      />
      <div className="code-layout">
        <div className="editor">
          <div className="gutter" ref={gutter} aria-hidden>
            {Array.from({ length: lines }, (_, i) => (
              <div key={i} className={errorLine === i + 1 ? "gutter-err" : undefined}>
                {i + 1}
              </div>
            ))}
          </div>
          <textarea
            className="editor-text"
            value={code}
            spellCheck={false}
            onChange={(e) => setCode(e.target.value)}
            onScroll={(e) => {
              if (gutter.current) gutter.current.scrollTop = e.currentTarget.scrollTop;
            }}
            onKeyDown={(e) => {
              if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
                e.preventDefault();
                if (!busy) start();
              } else if (e.key === "Tab") {
                e.preventDefault();
                const el = e.currentTarget;
                const { selectionStart: s, selectionEnd: end } = el;
                setCode(code.slice(0, s) + "    " + code.slice(end));
                requestAnimationFrame(() => el.setSelectionRange(s + 4, s + 4));
              }
            }}
            data-testid="code-editor"
            aria-label="Python code"
          />
        </div>
        <div className="card output-pane" data-testid="code-output">
          <div className="row">
            <h2 className="grow">Output</h2>
            {view && !sessionMode ? <StatusBadge state={view.state} testId="code-state" /> : null}
          </div>
          {sessionMode ? <SessionView state={session} /> : null}
          {connection && !sessionMode ? <div className="callout callout-warn small">{connection}</div> : null}
          {error && !sessionMode ? (
            <div className="callout callout-bad" data-testid="code-error">
              {describeError(error)}
            </div>
          ) : null}
          {!sessionMode && !view && !error ? <p className="muted">Run the code to see its output here.</p> : null}
          {active ? (
            <div className="tool-live">
              <ProgressBar current={view.progress?.current ?? null} total={view.progress?.total ?? null} label="run progress" />
              <span className="muted small">{view.state === "running" ? `running${view.worker ? ` on ${view.worker}` : ""}…` : view.state === "queued" ? "waiting for a python_q worker…" : "sending…"}</span>
            </div>
          ) : null}
          {!sessionMode && view?.error && view.state !== "done" ? (
            <div className={`callout ${view.state === "cancelled" ? "callout-warn" : "callout-bad"}`} data-testid="run-error">
              <strong>{view.error.type}</strong>: {view.error.message}
            </div>
          ) : null}
          {output && !sessionMode ? <PythonOutput output={output} /> : null}
          {!sessionMode && view?.taskId ? <p className="muted small mono">task {view.taskId}</p> : null}
        </div>
      </div>
    </div>
  );
}
