const LABELS: Record<string, string> = {
  pending: "pending",
  waiting: "waiting",
  queued: "queued",
  running: "running",
  done: "done",
  succeeded: "succeeded",
  error: "error",
  failed: "failed",
  cancelled: "cancelled",
  timeout: "timed out",
  lost: "lost",
  skipped: "skipped",
};

const TONE: Record<string, string> = {
  pending: "muted",
  waiting: "warn",
  queued: "muted",
  running: "info",
  done: "ok",
  succeeded: "ok",
  error: "bad",
  failed: "bad",
  lost: "bad",
  cancelled: "warn",
  timeout: "warn",
  skipped: "muted",
};

/** A coloured pill for a task, tool call, step or run state. */
export function StatusBadge({ state, testId }: { state: string; testId?: string }) {
  const tone = TONE[state] ?? "muted";
  return (
    <span className={`badge badge-${tone}`} data-testid={testId} data-state={state}>
      {state === "running" || state === "queued" || state === "waiting" ? <span className={`dot dot-${tone} ${state === "running" ? "pulse" : ""}`} /> : null}
      {LABELS[state] ?? state}
    </span>
  );
}

export function ProgressBar({ current, total, label }: { current: number | null; total: number | null; label?: string }) {
  // Nothing measurable yet (no total, or 0 done): an indeterminate bar that still shows life.
  const pct = current !== null && current > 0 && total ? Math.max(0, Math.min(100, (current / total) * 100)) : null;
  return (
    <div className="progress" role="progressbar" aria-valuenow={pct ?? undefined} aria-valuemin={0} aria-valuemax={100} aria-label={label}>
      <div className={`progress-fill ${pct === null ? "indeterminate" : ""}`} style={pct === null ? undefined : { width: `${pct}%` }} />
    </div>
  );
}

export function Spinner({ small }: { small?: boolean }) {
  return <span className={`spinner ${small ? "spinner-sm" : ""}`} aria-hidden />;
}
