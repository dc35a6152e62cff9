import { useQuery, useQueryClient } from "@tanstack/react-query";
import { Plus } from "lucide-react";
import { useEffect, useMemo, useState } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { api, call, type Schemas } from "../api/client";
import { describeError } from "../api/errors";
import { eventData } from "../api/sse";
import { PageHeader } from "../components/Layout";
import { Markdown } from "../components/Markdown";
import { Spinner, StatusBadge } from "../components/StatusBadge";
import { useToasts } from "../components/Toasts";
import { ago, duration } from "../lib/format";
import { followRunEvents } from "../lib/streams";
import { DagView } from "./DagView";
import { PipelineEditor } from "./PipelineEditor";
import type { PipelineDef } from "./pipelineDefs";

type Run = Schemas["PipelineRun"];

function StepDetail({ run, name }: { run: Run; name: string }) {
  const step = run.steps.find((s) => s.name === name);
  if (!step) return null;
  const output = step.output as Record<string, unknown> | null | undefined;
  const response = output && typeof output.response === "string" ? output.response : null;
  return (
    <section className="card" data-testid="step-detail">
      <div className="row">
        <h2 className="grow mono">{step.name}</h2>
        <StatusBadge state={step.status ?? "pending"} />
      </div>
      <p className="muted small">
        {step.kind} · {step.model ?? "default model"} · {duration(step.started_at, step.finished_at)} · {step.usage?.total_tokens ?? 0} tokens
      </p>
      {step.error ? (
        <div className="callout callout-bad">
          <strong>{step.error.type}</strong>: {step.error.message}
        </div>
      ) : null}
      {response ? (
        <div className="step-output" data-testid="step-output">
          <Markdown text={response} />
        </div>
      ) : output ? (
        <pre className="code">{JSON.stringify(output, null, 2)}</pre>
      ) : (
        <p className="muted">{step.status === "done" ? "No output." : "No output yet."}</p>
      )}
      {step.task_ids?.length ? (
        <p className="muted small">
          tasks:{" "}
          {step.task_ids?.map((t) => (
            <Link key={t} to={`/tasks/${t}`} className="mono">
              {t.slice(0, 8)}{" "}
            </Link>
          ))}
        </p>
      ) : null}
    </section>
  );
}

function RunView({ runId, onEdit }: { runId: string; onEdit: (def: PipelineDef) => void }) {
  const qc = useQueryClient();
  const toasts = useToasts();
  const [live, setLive] = useState<Record<string, string>>({});
  const [selected, setSelected] = useState<string | null>(null);
  const [connection, setConnection] = useState<string | null>(null);
  const run = useQuery({
    queryKey: ["pipeline-run", runId],
    queryFn: () => call(api.GET("/api/pipelines/runs/{run_id}", { params: { path: { run_id: runId } } })),
  });

  useEffect(() => {
    setLive({});
    const ctrl = new AbortController();
    let pending: ReturnType<typeof setTimeout> | undefined;
    const refresh = () => {
      clearTimeout(pending);
      pending = setTimeout(() => void qc.invalidateQueries({ queryKey: ["pipeline-run", runId] }), 150);
    };
    followRunEvents(
      runId,
      ctrl.signal,
      (e) => {
        const data = eventData<{ step?: string; status?: string }>(e);
        if (e.event === "step" && data.step && data.status) setLive((l) => ({ ...l, [data.step as string]: data.status as string }));
        refresh();
      },
      (status, detail) => setConnection(status === "reconnecting" ? `connection lost, resuming… (${detail ?? ""})` : null),
    )
      .then(() => {
        void qc.invalidateQueries({ queryKey: ["pipeline-run", runId] });
        void qc.invalidateQueries({ queryKey: ["pipeline-runs"] });
      })
      .catch((err) => setConnection(`live updates stopped: ${describeError(err)}`));
    return () => {
      clearTimeout(pending);
      ctrl.abort();
    };
  }, [runId, qc]);

  const statuses = useMemo(() => {
    const out: Record<string, string> = {};
    const RANK: Record<string, number> = { pending: 0, queued: 1, running: 2 };
    for (const s of run.data?.steps ?? []) {
      const l = live[s.name];
      // whichever is further along: the saved state or the live event
      const saved = s.status ?? "pending";
      out[s.name] = l && (RANK[l] ?? 3) > (RANK[saved] ?? 3) ? l : saved;
    }
    return out;
  }, [run.data, live]);

  if (run.isLoading) return <div className="center pad"><Spinner /></div>;
  if (run.error) return <div className="callout callout-bad">{describeError(run.error)}</div>;
  const r = run.data;
  if (!r) return null;
  const detail = Object.fromEntries(r.steps.filter((s) => s.status === "done" || s.status === "running").map((s) => [s.name, s.status === "done" ? duration(s.started_at, s.finished_at) : "…"]));

  const cancel = async () => {
    try {
      await call(api.POST("/api/pipelines/runs/{run_id}/cancel", { params: { path: { run_id: runId } } }));
      void qc.invalidateQueries({ queryKey: ["pipeline-run", runId] });
    } catch (err) {
      toasts.error(err);
    }
  };

  return (
    <div className="stack">
      <section className="card">
        <div className="row">
          <h2 className="grow">
            Run <span className="mono">{r.run_id.slice(0, 8)}</span>
          </h2>
          <StatusBadge state={r.status ?? "running"} testId="run-status" />
          {r.status === "running" ? (
            <button className="btn btn-danger btn-sm" onClick={() => void cancel()}>
              Cancel run
            </button>
          ) : null}
          <button className="btn btn-ghost btn-sm" onClick={() => onEdit(r.definition)}>
            Edit a copy
          </button>
        </div>
        <p className="muted small">
          started {ago(r.created_at)} · {duration(r.created_at, r.finished_at)} · {(r.usage?.total_tokens ?? 0).toLocaleString()} tokens · click a step to see its output
        </p>
        {connection ? <div className="callout callout-warn small">{connection}</div> : null}
        {r.error ? <div className="callout callout-bad">{r.error}</div> : null}
        <DagView steps={r.definition.steps} statuses={statuses} selected={selected} onSelect={setSelected} detail={detail} />
      </section>
      {selected ? <StepDetail run={r} name={selected} /> : null}
    </div>
  );
}

export function PipelinesPage() {
  const { runId } = useParams();
  const navigate = useNavigate();
  const [draft, setDraft] = useState<{ def: PipelineDef; n: number } | null>(null);
  const runs = useQuery({
    queryKey: ["pipeline-runs"],
    queryFn: () => call(api.GET("/api/pipelines/runs", { params: { query: { limit: 30 } } })),
    refetchInterval: (q) => (q.state.data?.some((r) => r.status === "running") ? 3000 : false),
  });
  useEffect(() => {
    void runs.refetch();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [runId]);

  return (
    <div className="page page-wide">
      <PageHeader title="Pipelines" subtitle="DAGs of language-model steps: define, run, and watch each step fill in." actions={<button className="btn" onClick={() => { setDraft(null); navigate("/pipelines"); }} data-testid="pipeline-new"><Plus size={15} /> New pipeline</button>} />
      <div className="split split-narrow">
        <section className="card card-flush">
          <div className="list-head">Recent runs</div>
          <ul className="list" data-testid="run-list">
            {runs.data?.length === 0 ? <li className="pad muted small">No runs yet.</li> : null}
            {runs.data?.map((r) => {
              const states = Object.values(r.steps);
              const done = states.filter((s) => s === "done").length;
              return (
                <li key={r.run_id}>
                  <button className={`list-button ${r.run_id === runId ? "active" : ""}`} onClick={() => navigate(`/pipelines/runs/${r.run_id}`)}>
                    <div className="row">
                      <span className="mono grow">{r.run_id.slice(0, 8)}</span>
                      <StatusBadge state={r.status} />
                    </div>
                    <div className="muted small">
                      {done}/{states.length} steps · {ago(r.created_at)}
                    </div>
                  </button>
                </li>
              );
            })}
          </ul>
        </section>
        <div>
          {runId ? (
            <RunView
              runId={runId}
              onEdit={(def) => {
                setDraft((d) => ({ def, n: (d?.n ?? 0) + 1 }));
                navigate("/pipelines");
              }}
            />
          ) : (
            <PipelineEditor key={draft?.n ?? 0} initial={draft?.def} />
          )}
        </div>
      </div>
    </div>
  );
}
