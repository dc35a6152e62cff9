import { useQuery, useQueryClient } from "@tanstack/react-query";
import { X } from "lucide-react";
import { useEffect, useMemo, useState } from "react";
import { useNavigate, useParams } from "react-router-dom";
import { api, call, fetchWithDeadline, type Schemas } from "../api/client";
import { describeError } from "../api/errors";
import { eventData, type SseEvent } from "../api/sse";
import { PageHeader } from "../components/Layout";
import { TraceId, traceOf } from "../components/TraceId";
import { Spinner, StatusBadge } from "../components/StatusBadge";
import { useToasts } from "../components/Toasts";
import { ago, duration } from "../lib/format";
import { followTaskEvents } from "../lib/streams";

type Task = Schemas["TaskRunOut"];
interface Readiness {
  status: string;
  redis: string;
  queues: Record<string, string[]>;
  problems: string[];
}

const QUEUES = ["python_q", "circuit_q", "llm_q"];
const QUEUE_INFO: Record<string, string> = { python_q: "sandboxed Python", circuit_q: "dataset analysis", llm_q: "language models" };
const DAY_MS = 86_400_000;

async function readiness(): Promise<Readiness> {
  // 503 still carries the body (which queues lack workers), so read it either way.
  const response = await fetchWithDeadline("/api/readyz", {}, 10_000);
  return (await response.json()) as Readiness;
}

function EventLine({ e }: { e: { id: string; type: string; data: Record<string, unknown> } }) {
  const d = e.data;
  const text =
    e.type === "queued"
      ? `queued on ${String(d.queue ?? "")}`
      : e.type === "started"
        ? `started on ${String(d.worker ?? "a worker")} (attempt ${String(d.attempt ?? 1)})`
        : e.type === "progress"
          ? `${d.current ?? ""}${d.total ? `/${String(d.total)}` : ""} ${String(d.message ?? "")}`
          : e.type === "error"
            ? `${String(d.error_type ?? "")}: ${String(d.message ?? "")}`
            : e.type === "cancelled"
              ? String(d.reason ?? "cancelled")
              : e.type === "done"
                ? "finished"
                : JSON.stringify(d);
  const ms = Number(e.id.split("-")[0]);
  return (
    <li className={`event event-${e.type}`} data-testid="task-event">
      <span className="event-time mono">{Number.isFinite(ms) ? new Date(ms).toLocaleTimeString() : ""}</span>
      <StatusBadge state={e.type === "started" || e.type === "progress" ? "running" : e.type} />
      <span className="event-text">{text}</span>
    </li>
  );
}

function TaskDetail({ taskId, onClose }: { taskId: string; onClose: () => void }) {
  const qc = useQueryClient();
  const toasts = useToasts();
  const [liveEvents, setLiveEvents] = useState<{ id: string; type: string; data: Record<string, unknown> }[]>([]);
  const detail = useQuery({
    queryKey: ["task", taskId],
    queryFn: () => call(api.GET("/api/tasks/{task_id}", { params: { path: { task_id: taskId } } })),
    // Fair share: a waiting run has no events yet; its place in your backlog is re-read.
    refetchInterval: (q) => (q.state.data?.state === "waiting" ? 1000 : false),
  });
  const active = detail.data && (detail.data.state === "queued" || detail.data.state === "running");
  useEffect(() => {
    if (!active) return;
    const ctrl = new AbortController();
    const seen = new Set((detail.data?.events ?? []).map((e) => e.id));
    const last = detail.data?.events.at(-1)?.id;
    followTaskEvents(taskId, ctrl.signal, (e: SseEvent) => {
      if (e.id && seen.has(e.id)) return;
      setLiveEvents((l) => [...l, { id: e.id ?? "", type: e.event, data: eventData(e) }]);
    })
      .then(() => {
        void qc.invalidateQueries({ queryKey: ["task", taskId] });
        void qc.invalidateQueries({ queryKey: ["tasks"] });
      })
      .catch(() => undefined);
    void last;
    return () => ctrl.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [taskId, active]);

  const cancel = async () => {
    try {
      await call(api.POST("/api/tasks/{task_id}/cancel", { params: { path: { task_id: taskId } } }));
      toasts.push("Cancel requested", "ok");
    } catch (err) {
      toasts.error(err);
    }
  };
  const t = detail.data;
  const events = [...(t?.events ?? []), ...liveEvents.filter((l) => !(t?.events ?? []).some((e) => e.id === l.id))];
  return (
    <aside className="drawer" data-testid="task-detail">
      <div className="row">
        <h2 className="grow">Task</h2>
        <button className="icon-btn" onClick={onClose} aria-label="Close">
          <X size={16} />
        </button>
      </div>
      {detail.isLoading ? <Spinner /> : null}
      {detail.error ? <div className="callout callout-bad">{describeError(detail.error)}</div> : null}
      {t ? (
        <>
          <dl className="kv">
            <dt>id</dt>
            <dd className="mono small">{t.task_id}</dd>
            <dt>task</dt>
            <dd>
              {t.tool ?? t.task_name} <span className="muted small">({t.task_name})</span>
            </dd>
            <dt>queue</dt>
            <dd>{t.queue}</dd>
            <dt>state</dt>
            <dd>
              <StatusBadge state={t.state} testId="task-detail-state" />
              {t.state === "waiting" ? (
                <span className="muted small" data-testid="task-waiting-ahead">
                  {" "}
                  waiting: {t.waiting_ahead ?? 0} ahead of you (your fair share of {t.queue} is in use)
                </span>
              ) : null}
            </dd>
            <dt>created</dt>
            <dd>{new Date(t.created_at).toLocaleString()}</dd>
            <dt>ran for</dt>
            <dd>{duration(t.started_at, t.finished_at)}</dd>
            <dt>attempts</dt>
            <dd>{t.attempts}</dd>
            <dt>trace</dt>
            <dd>
              <TraceId id={traceOf(events) ?? t.trace_id ?? null} />
            </dd>
          </dl>
          {t.error_message ? (
            <div className="callout callout-bad">
              <strong>{t.error_type}</strong>: {t.error_message}
            </div>
          ) : null}
          {active ? (
            <button className="btn btn-danger btn-sm" onClick={() => void cancel()}>
              Cancel task
            </button>
          ) : null}
          <h3>Events</h3>
          <ul className="events">
            {events.map((e) => (
              <EventLine key={e.id} e={e} />
            ))}
          </ul>
        </>
      ) : null}
    </aside>
  );
}

export function TasksPage() {
  const { taskId } = useParams();
  const navigate = useNavigate();
  const [stateFilter, setStateFilter] = useState("");
  const [queueFilter, setQueueFilter] = useState("");
  const ready = useQuery({ queryKey: ["readyz"], queryFn: readiness, refetchInterval: 5000 });
  const tasks = useQuery({
    queryKey: ["tasks"],
    queryFn: () => call(api.GET("/api/tasks", { params: { query: { limit: 200 } } })),
    refetchInterval: 3000,
  });

  const perQueue = useMemo(() => {
    const now = Date.now();
    return QUEUES.map((q) => {
      const mine = (tasks.data ?? []).filter((t) => t.queue === q);
      const failures = mine.filter((t) => (t.state === "error" || t.state === "lost") && now - Date.parse(t.created_at) < DAY_MS);
      return {
        queue: q,
        workers: ready.data?.queues[q] ?? [],
        queued: mine.filter((t) => t.state === "queued").length,
        running: mine.filter((t) => t.state === "running").length,
        failures,
      };
    });
  }, [tasks.data, ready.data]);

  const shown = (tasks.data ?? []).filter((t: Task) => (!stateFilter || t.state === stateFilter) && (!queueFilter || t.queue === queueFilter));

  return (
    <div className="page page-wide">
      <PageHeader
        title="Tasks"
        subtitle="Your tasks on each worker pool, live. Workers online comes from the app's readiness check."
        actions={
          ready.data ? (
            <span className={`chip ${ready.data.status === "ready" ? "chip-ok" : "chip-bad"}`} data-testid="readiness">
              {ready.data.status === "ready" ? "● all queues served" : `● ${ready.data.problems.join("; ") || ready.data.status}`}
            </span>
          ) : ready.error ? (
            <span className="chip chip-bad">{describeError(ready.error)}</span>
          ) : null
        }
      />
      <div className="queue-cards">
        {perQueue.map((q) => (
          <section key={q.queue} className="card queue-card" data-testid="queue-card" data-queue={q.queue}>
            <div className="row">
              <h2 className="grow mono">{q.queue}</h2>
              <span className="muted small">{QUEUE_INFO[q.queue]}</span>
            </div>
            <div className="stats">
              <div className="stat">
                <div className={`stat-value ${q.workers.length ? "ok" : "bad"}`} data-testid="workers-online">
                  {q.workers.length}
                </div>
                <div className="stat-label">workers</div>
              </div>
              <div className="stat">
                <div className="stat-value">{q.queued}</div>
                <div className="stat-label">queued</div>
              </div>
              <div className="stat">
                <div className="stat-value">{q.running}</div>
                <div className="stat-label">running</div>
              </div>
              <div className="stat">
                <div className={`stat-value ${q.failures.length ? "bad" : ""}`}>{q.failures.length}</div>
                <div className="stat-label">failed 24 h</div>
              </div>
            </div>
            <div className="muted small ellipsis" title={q.workers.join(", ")}>
              {q.workers.length ? q.workers.join(", ") : "no worker is consuming this queue"}
            </div>
            {q.failures[0] ? (
              <button className="failure" onClick={() => navigate(`/tasks/${q.failures[0]?.task_id}`)}>
                last failure {ago(q.failures[0].finished_at ?? q.failures[0].created_at)}: {q.failures[0].error_type ?? q.failures[0].state} {q.failures[0].error_message ?? ""}
              </button>
            ) : null}
          </section>
        ))}
      </div>
      <div className="with-drawer">
        <section className="card card-flush grow">
          <div className="row pad">
            <h2 className="grow">Recent tasks</h2>
            <select value={queueFilter} onChange={(e) => setQueueFilter(e.target.value)} aria-label="Queue">
              <option value="">all queues</option>
              {QUEUES.map((q) => (
                <option key={q}>{q}</option>
              ))}
            </select>
            <select value={stateFilter} onChange={(e) => setStateFilter(e.target.value)} aria-label="State">
              <option value="">any state</option>
              {["waiting", "queued", "running", "done", "error", "cancelled", "lost"].map((s) => (
                <option key={s}>{s}</option>
              ))}
            </select>
          </div>
          {tasks.error ? <div className="callout callout-bad">{describeError(tasks.error)}</div> : null}
          <div className="table-scroll">
            <table className="data-table clickable" data-testid="tasks-table">
              <thead>
                <tr>
                  <th>task</th>
                  <th>queue</th>
                  <th>state</th>
                  <th>created</th>
                  <th>ran for</th>
                  <th>error</th>
                </tr>
              </thead>
              <tbody>
                {shown.map((t) => (
                  <tr key={t.task_id} onClick={() => navigate(`/tasks/${t.task_id}`)} className={t.task_id === taskId ? "active" : undefined} data-testid="task-row">
                    <td>
                      <div>{t.tool ?? t.task_name}</div>
                      <div className="muted small mono">{t.task_id.slice(0, 8)}</div>
                    </td>
                    <td className="mono small">{t.queue}</td>
                    <td>
                      <StatusBadge state={t.state} />
                    </td>
                    <td className="small">{ago(t.created_at)}</td>
                    <td className="small">{duration(t.started_at, t.finished_at)}</td>
                    <td className="small ellipsis err-cell" title={t.error_message ?? undefined}>
                      {t.error_type ? `${t.error_type}: ${t.error_message ?? ""}` : ""}
                    </td>
                  </tr>
                ))}
                {!shown.length && !tasks.isLoading ? (
                  <tr>
                    <td colSpan={6} className="muted center pad">
                      No tasks yet — run something from Chat, Code, Datasets or Pipelines.
                    </td>
                  </tr>
                ) : null}
              </tbody>
            </table>
          </div>
        </section>
        {taskId ? <TaskDetail key={taskId} taskId={taskId} onClose={() => navigate("/tasks")} /> : null}
      </div>
    </div>
  );
}
