/** The Code page's session mode: cells run in one research session (state persists between
 * them), a "restart session" button, and the session's variables. */
import { RotateCcw } from "lucide-react";
import { useCallback, useState } from "react";
import { api, authHeaders, call, fetchWithDeadline, type Schemas } from "../api/client";
import { describeError, errorFromResponse } from "../api/errors";
import { PythonOutput } from "./ToolOutput";

type Session = Schemas["SessionOut"];
type RunResponse = Schemas["SessionRunResponse"];
const KEY = "corral.codeSession";
const RUN_TIMEOUT_S = 120;

export interface Cell {
  code: string;
  response: RunResponse;
}

function formatSize(bytes: number | null | undefined): string {
  if (bytes == null) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1 << 20) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1 << 20)).toFixed(1)} MB`;
}

/** One session for the Code page, remembered across reloads; made on the first run. */
export function useCodeSession() {
  const [session, setSession] = useState<Session | null>(null);
  const [cells, setCells] = useState<Cell[]>([]);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const ensure = useCallback(async (): Promise<string> => {
    const known = session?.state !== "closed" ? (session?.id ?? localStorage.getItem(KEY)) : null;
    if (known) return known;
    const made = await call(api.POST("/api/sessions", { body: {} }));
    localStorage.setItem(KEY, made.id);
    setSession(made);
    return made.id;
  }, [session]);

  const refresh = useCallback(async (id: string) => {
    const info = await call(api.GET("/api/sessions/{session_id}", { params: { path: { session_id: id } } }));
    setSession(info);
  }, []);

  const send = useCallback(
    async (code: string, restart: boolean) => {
      setBusy(true);
      setError(null);
      try {
        let id = await ensure();
        const post = (sid: string) =>
          fetchWithDeadline(
            `/api/sessions/${encodeURIComponent(sid)}/run`,
            {
              method: "POST",
              headers: authHeaders({ "Content-Type": "application/json" }),
              body: JSON.stringify({ code, restart, timeout_s: RUN_TIMEOUT_S }),
            },
            (RUN_TIMEOUT_S + 10) * 1000,
          );
        let resp = await post(id);
        if (resp.status === 404 || resp.status === 409) {
          // The remembered session is gone or closed: start a new one.
          localStorage.removeItem(KEY);
          setSession(null);
          const made = await call(api.POST("/api/sessions", { body: {} }));
          localStorage.setItem(KEY, made.id);
          id = made.id;
          resp = await post(id);
        }
        if (!resp.ok) throw await errorFromResponse(resp);
        const body = (await resp.json()) as RunResponse;
        setCells((old) => (restart ? [] : old).concat(restart && code === "pass" ? [] : [{ code, response: body }]));
        await refresh(id);
      } catch (err) {
        setError(err);
      } finally {
        setBusy(false);
      }
    },
    [ensure, refresh],
  );

  return {
    session,
    cells,
    busy,
    error,
    run: (code: string) => send(code, false),
    restart: () => send("pass", true),
  };
}

export function SessionView({ state }: { state: ReturnType<typeof useCodeSession> }) {
  const { session, cells, busy, error, restart } = state;
  return (
    <div data-testid="session-view">
      <div className="row">
        <span className="muted small grow" data-testid="session-info">
          {session
            ? `session ${session.id.slice(0, 8)} · ${session.state}${session.worker ? ` on ${session.worker}` : ""} · ${session.calls} calls${session.restores ? ` · restored ${session.restores}×` : ""}`
            : "A session is started on the first run; variables persist between runs."}
        </span>
        <button className="btn" onClick={() => void restart()} disabled={busy} data-testid="session-restart">
          <RotateCcw size={13} /> Restart session
        </button>
      </div>
      {error ? (
        <div className="callout callout-bad" data-testid="session-error">
          {describeError(error)}
        </div>
      ) : null}
      {session && session.variables.length ? (
        <table className="table small" data-testid="session-variables">
          <thead>
            <tr>
              <th>name</th>
              <th>type</th>
              <th>shape</th>
              <th>size</th>
            </tr>
          </thead>
          <tbody>
            {session.variables.map((v) => (
              <tr key={v.name}>
                <td className="mono">{v.name}</td>
                <td>{v.type}</td>
                <td className="mono">{v.shape ?? ""}</td>
                <td>{formatSize(v.size)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      {cells.map((cell, i) => (
        <div className="session-cell" key={`${i}-${cell.response.task_id}`} data-testid="session-cell">
          <pre className="console muted small">{`[${i + 1}] ${cell.code.split("\n").slice(0, 3).join("\n")}${cell.code.split("\n").length > 3 ? "\n…" : ""}`}</pre>
          {cell.response.output ? (
            <PythonOutput output={cell.response.output as Record<string, unknown>} />
          ) : (
            <div className="callout callout-bad" data-testid="run-error">
              <strong>{cell.response.error?.type}</strong>: {cell.response.error?.message}
            </div>
          )}
        </div>
      ))}
    </div>
  );
}
