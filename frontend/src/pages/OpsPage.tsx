import { useQuery } from "@tanstack/react-query";
import { useRef } from "react";
import { fetchWithDeadline, authHeaders } from "../api/client";
import { PageHeader } from "../components/Layout";
import { Spinner } from "../components/StatusBadge";
import { TraceId } from "../components/TraceId";

// GET /api/ops/overview (admins): see backend corral/app/observability/router.py.
interface QueueRow { name: string; depth: number | null; workers: number }
interface TaskRow { task: string; sent: number; started: number; succeeded: number; failed: number; lost: number; wait_count: number; wait_sum_s: number; run_count: number; run_sum_s: number }
interface WorkerRow { name: string; queues: string[]; active: number; processed: number; heartbeat_age_s: number; healthy: boolean }
interface FailureRow { task_id: string; task_name: string; error_type: string; message: string; trace_id: string; worker: string; at: number }
export interface OpsOverview { at: number; queues: QueueRow[]; tasks: TaskRow[]; workers: WorkerRow[]; failures: FailureRow[] }

const REFRESH_MS = 2000;

class OpsError extends Error {
  constructor(public status: number, message: string) {
    super(message);
  }
}

async function overview(): Promise<OpsOverview> {
  const response = await fetchWithDeadline("/api/ops/overview?failures=20", { headers: authHeaders() }, 10_000);
  if (!response.ok) {
    const body = (await response.json().catch(() => ({}))) as { detail?: string };
    throw new OpsError(response.status, body.detail ?? `HTTP ${response.status}`);
  }
  return (await response.json()) as OpsOverview;
}

/** Per-second rates of the task counters between the last two snapshots. */
function useRates(data: OpsOverview | undefined): Map<string, { sent: number; done: number; failed: number }> {
  const prev = useRef<OpsOverview | undefined>(undefined);
  const last = useRef<Map<string, { sent: number; done: number; failed: number }>>(new Map());
  if (data && prev.current && data.at > prev.current.at) {
    const dt = data.at - prev.current.at;
    const before = new Map(prev.current.tasks.map((t) => [t.task, t]));
    const rates = new Map<string, { sent: number; done: number; failed: number }>();
    for (const t of data.tasks) {
      const b = before.get(t.task);
      rates.set(t.task, {
        sent: (t.sent - (b?.sent ?? 0)) / dt,
        done: (t.succeeded - (b?.succeeded ?? 0)) / dt,
        failed: (t.failed + t.lost - (b?.failed ?? 0) - (b?.lost ?? 0)) / dt,
      });
    }
    last.current = rates;
  }
  if (data && data !== prev.current) prev.current = data;
  return last.current;
}

const rate = (n: number | undefined) => (n ? n.toFixed(2) : "0");
const mean = (sum: number, count: number) => (count ? `${((sum / count) * 1000).toFixed(0)} ms` : "–");

export function OpsPage() {
  const q = useQuery({ queryKey: ["ops-overview"], queryFn: overview, refetchInterval: REFRESH_MS, retry: false });
  const rates = useRates(q.data);
  const forbidden = q.error instanceof OpsError && q.error.status === 403;
  return (
    <div className="page" data-testid="ops-page">
      <PageHeader title="Operations" subtitle={`Queues, workers and failures, refreshed every ${REFRESH_MS / 1000} s. Traces: look a trace id up in Jaeger.`} />
      {q.isLoading ? <Spinner /> : null}
      {forbidden ? (
        <div className="callout callout-warn" data-testid="ops-forbidden">
          This view is for admins. {q.error?.message}
        </div>
      ) : q.error ? (
        <div className="callout callout-bad">{q.error.message}</div>
      ) : null}
      {q.data ? (
        <>
          <section className="card card-flush">
            <h2 className="card-title">Queues</h2>
            <table className="data-table" data-testid="ops-queues">
              <thead>
                <tr><th>queue</th><th className="num">depth</th><th className="num">workers</th></tr>
              </thead>
              <tbody>
                {q.data.queues.map((r) => (
                  <tr key={r.name} data-queue={r.name}>
                    <td className="mono">{r.name}</td>
                    <td className="num" data-testid="queue-depth">{r.depth ?? "n/a"}</td>
                    <td className="num" data-testid="queue-workers">{r.workers}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </section>
          <section className="card card-flush">
            <h2 className="card-title">Tasks</h2>
            <table className="data-table" data-testid="ops-tasks">
              <thead>
                <tr>
                  <th>task</th><th className="num">sent</th><th className="num">succeeded</th><th className="num">failed</th><th className="num">lost</th>
                  <th className="num">sent/s</th><th className="num">done/s</th><th className="num">failed/s</th><th className="num">mean wait</th><th className="num">mean run</th>
                </tr>
              </thead>
              <tbody>
                {q.data.tasks.map((t) => (
                  <tr key={t.task} data-task={t.task}>
                    <td className="mono">{t.task}</td>
                    <td className="num">{t.sent}</td>
                    <td className="num" data-testid="task-succeeded">{t.succeeded}</td>
                    <td className="num" data-testid="task-failed">{t.failed}</td>
                    <td className="num">{t.lost}</td>
                    <td className="num">{rate(rates.get(t.task)?.sent)}</td>
                    <td className="num">{rate(rates.get(t.task)?.done)}</td>
                    <td className="num">{rate(rates.get(t.task)?.failed)}</td>
                    <td className="num">{mean(t.wait_sum_s, t.wait_count)}</td>
                    <td className="num">{mean(t.run_sum_s, t.run_count)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </section>
          <section className="card card-flush">
            <h2 className="card-title">Workers</h2>
            <table className="data-table" data-testid="ops-workers">
              <thead>
                <tr><th>worker</th><th>queues</th><th className="num">active</th><th className="num">processed</th><th className="num">heartbeat</th><th>health</th></tr>
              </thead>
              <tbody>
                {q.data.workers.map((w) => (
                  <tr key={w.name} data-worker={w.name}>
                    <td className="mono">{w.name}</td>
                    <td>{w.queues.join(", ")}</td>
                    <td className="num">{w.active}</td>
                    <td className="num">{w.processed}</td>
                    <td className="num">{w.heartbeat_age_s.toFixed(0)} s ago</td>
                    <td data-testid="worker-health">{w.healthy ? "healthy" : "silent"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </section>
          <section className="card card-flush">
            <h2 className="card-title">Recent failures</h2>
            {q.data.failures.length === 0 ? <p className="muted small pad">None.</p> : null}
            <table className="data-table" data-testid="ops-failures">
              <tbody>
                {q.data.failures.map((f) => (
                  <tr key={f.task_id} data-task-id={f.task_id}>
                    <td className="small">{new Date(f.at * 1000).toLocaleTimeString()}</td>
                    <td className="mono">{f.task_name}</td>
                    <td className="err-cell"><strong>{f.error_type}</strong>: {f.message}</td>
                    <td className="mono small">{f.worker}</td>
                    <td><TraceId id={f.trace_id} /></td>
                  </tr>
                ))}
              </tbody>
            </table>
          </section>
        </>
      ) : null}
    </div>
  );
}
