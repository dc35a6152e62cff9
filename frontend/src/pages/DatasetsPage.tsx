import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useRef, useState } from "react";
import { useNavigate, useParams } from "react-router-dom";
import { api, call, type Schemas } from "../api/client";
import { describeError } from "../api/errors";
import { DataTable } from "../components/DataTable";
import { PageHeader } from "../components/Layout";
import { ProgressBar, Spinner, StatusBadge } from "../components/StatusBadge";
import { useToasts } from "../components/Toasts";
import { AnalysisOutput } from "../components/ToolOutput";
import { ago, bytes } from "../lib/format";
import { followTaskEvents } from "../lib/streams";
import { TERMINAL } from "../lib/toolState";
import { uploadWithProgress } from "../lib/upload";
import { useToolRun } from "../lib/useToolRun";

type Summary = Schemas["DatasetSummary"];
type Detail = Schemas["DatasetOut"];
type Format = "csv" | "parquet" | "sonata";

function guessFormat(name: string): Format {
  const lower = name.toLowerCase();
  if (lower.endsWith(".parquet") || lower.endsWith(".pq")) return "parquet";
  if (lower.endsWith(".h5") || lower.endsWith(".hdf5")) return "sonata";
  return "csv";
}

function UploadCard({ onUploaded }: { onUploaded: (d: Detail) => void }) {
  const [file, setFile] = useState<File | null>(null);
  const [format, setFormat] = useState<Format>("csv");
  const [population, setPopulation] = useState("");
  const [progress, setProgress] = useState<{ loaded: number; total: number } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [drag, setDrag] = useState(false);
  const ctrl = useRef<AbortController | null>(null);
  const input = useRef<HTMLInputElement>(null);

  const pick = (f: File | null | undefined) => {
    if (!f) return;
    setFile(f);
    setFormat(guessFormat(f.name));
    setError(null);
  };

  async function upload() {
    if (!file) return;
    if (format === "sonata" && !population.trim()) {
      setError(new Error("A SONATA file needs the node population to read."));
      return;
    }
    const form = new FormData();
    form.append("file", file);
    form.append("format", format);
    form.append("name", file.name);
    if (population.trim()) form.append("population", population.trim());
    ctrl.current = new AbortController();
    setError(null);
    setProgress({ loaded: 0, total: file.size });
    try {
      const created = await uploadWithProgress<Detail>({
        url: "/api/datasets",
        form,
        signal: ctrl.current.signal,
        onProgress: (loaded, total) => setProgress({ loaded, total: total || file.size }),
      });
      setFile(null);
      onUploaded(created);
    } catch (err) {
      if (!(err instanceof DOMException && err.name === "AbortError")) setError(err);
    } finally {
      setProgress(null);
      if (input.current) input.current.value = "";
    }
  }

  return (
    <section className="card">
      <h2>Upload a dataset</h2>
      <div
        className={`dropzone ${drag ? "drag" : ""}`}
        onDragOver={(e) => {
          e.preventDefault();
          setDrag(true);
        }}
        onDragLeave={() => setDrag(false)}
        onDrop={(e) => {
          e.preventDefault();
          setDrag(false);
          pick(e.dataTransfer.files[0]);
        }}
        onClick={() => input.current?.click()}
      >
        <input ref={input} type="file" accept=".csv,.parquet,.pq,.h5,.hdf5" hidden onChange={(e) => pick(e.target.files?.[0])} data-testid="dataset-file" />
        {file ? (
          <span>
            <strong>{file.name}</strong> · {bytes(file.size)}
          </span>
        ) : (
          <span className="muted">Drop a CSV, Parquet or SONATA nodes file here, or click to choose</span>
        )}
      </div>
      {file ? (
        <div className="row wrap">
          <label className="field-inline">
            format
            <select value={format} onChange={(e) => setFormat(e.target.value as Format)} data-testid="dataset-format">
              <option value="csv">CSV</option>
              <option value="parquet">Parquet</option>
              <option value="sonata">SONATA nodes (HDF5)</option>
            </select>
          </label>
          {format === "sonata" ? (
            <label className="field-inline">
              population
              <input value={population} onChange={(e) => setPopulation(e.target.value)} placeholder="e.g. cortex" />
            </label>
          ) : null}
          <span className="grow" />
          {progress ? (
            <button className="btn btn-ghost" onClick={() => ctrl.current?.abort()}>
              Cancel
            </button>
          ) : (
            <button className="btn btn-primary" onClick={() => void upload()} data-testid="dataset-upload">
              Upload
            </button>
          )}
        </div>
      ) : null}
      {progress ? (
        <div data-testid="upload-progress">
          <ProgressBar current={progress.loaded} total={progress.total} label="upload progress" />
          <span className="muted small">
            {progress.loaded >= progress.total ? "storing the file…" : `${bytes(progress.loaded)} of ${bytes(progress.total)} (${Math.round((progress.loaded / Math.max(1, progress.total)) * 100)}%)`}
          </span>
        </div>
      ) : null}
      {error ? (
        <div className="callout callout-bad" data-testid="upload-error">
          {describeError(error)}
        </div>
      ) : null}
    </section>
  );
}

function AskCard({ dataset }: { dataset: Detail }) {
  const [mode, setMode] = useState<"question" | "sql">("question");
  const [question, setQuestion] = useState("");
  const [sql, setSql] = useState(`SELECT * FROM neurons LIMIT 100`);
  const { view, error, busy, run, cancel, reset } = useToolRun();
  useEffect(() => reset(), [dataset.id, reset]);
  const active = view && !TERMINAL.has(view.state);
  const output = view?.output && typeof view.output === "object" ? (view.output as Record<string, unknown>) : null;

  const submit = () => {
    const args: Record<string, unknown> = { dataset_id: dataset.id, max_rows: 5000 };
    if (mode === "sql") {
      if (!sql.trim()) return;
      Object.assign(args, { sql, question: "SQL from the datasets page" });
    } else {
      if (!question.trim()) return;
      args.question = question.trim();
    }
    void run("circuit_population_analysis", args);
  };

  return (
    <section className="card">
      <div className="row">
        <h2 className="grow">Ask the data</h2>
        <div className="segmented" role="tablist">
          <button role="tab" aria-selected={mode === "question"} className={mode === "question" ? "on" : ""} onClick={() => setMode("question")} data-testid="mode-question">
            Question
          </button>
          <button role="tab" aria-selected={mode === "sql"} className={mode === "sql" ? "on" : ""} onClick={() => setMode("sql")} data-testid="mode-sql">
            SQL
          </button>
        </div>
      </div>
      {mode === "question" ? (
        <textarea
          className="input-lg"
          rows={2}
          value={question}
          onChange={(e) => setQuestion(e.target.value)}
          placeholder="e.g. How many neurons per layer, largest first?"
          data-testid="ask-question"
          onKeyDown={(e) => e.key === "Enter" && (e.ctrlKey || e.metaKey) && submit()}
        />
      ) : (
        <textarea className="code-input" rows={4} value={sql} onChange={(e) => setSql(e.target.value)} spellCheck={false} data-testid="ask-sql" />
      )}
      <div className="row">
        <span className="muted small grow">
          {mode === "sql" ? (
            <>
              One read-only SELECT over the table <code>neurons</code>, run with DuckDB on circuit_q.
            </>
          ) : (
            "A language model writes the SQL from the schema and sample rows; you see it with the result."
          )}
        </span>
        {view ? <StatusBadge state={view.state} testId="ask-state" /> : null}
        {active ? (
          <button className="btn btn-danger" onClick={() => void cancel()}>
            Stop
          </button>
        ) : (
          <button className="btn btn-primary" onClick={submit} disabled={busy} data-testid="ask-run">
            Run
          </button>
        )}
      </div>
      {active ? <ProgressBar current={view.progress?.current ?? null} total={view.progress?.total ?? null} label="query progress" /> : null}
      {error ? (
        <div className="callout callout-bad" data-testid="ask-error">
          {describeError(error)}
        </div>
      ) : null}
      {view?.error && view.state !== "done" ? (
        <div className="callout callout-bad">
          <strong>{view.error.type}</strong>: {view.error.message}
        </div>
      ) : null}
      {output ? <AnalysisOutput output={output} /> : null}
    </section>
  );
}

/** A dataset a circuit_q worker is still reading: its ingest task's progress, live. */
function IngestProgress({ dataset }: { dataset: Detail }) {
  const qc = useQueryClient();
  const [step, setStep] = useState<{ current: number | null; total: number | null; message: string }>({
    current: null,
    total: null,
    message: "queued for a circuit_q worker",
  });
  useEffect(() => {
    if (!dataset.task_id) return;
    const ctrl = new AbortController();
    const refresh = () => {
      void qc.invalidateQueries({ queryKey: ["dataset", dataset.id] });
      void qc.invalidateQueries({ queryKey: ["datasets"] });
    };
    followTaskEvents(dataset.task_id, ctrl.signal, (event) => {
      if (event.event === "progress") {
        try {
          const data = JSON.parse(event.data) as { current?: number; total?: number; message?: string };
          setStep({ current: data.current ?? null, total: data.total ?? null, message: data.message ?? "" });
        } catch {
          /* a progress event without JSON data: keep the last one */
        }
      } else if (event.event === "started") {
        setStep((s) => ({ ...s, message: "a worker is reading the file" }));
      } else if (["done", "error", "cancelled"].includes(event.event)) {
        refresh();
      }
    })
      .then(refresh)
      .catch(() => undefined);
    return () => ctrl.abort();
  }, [dataset.id, dataset.task_id, qc]);
  return (
    <div data-testid="dataset-processing">
      <ProgressBar current={step.current} total={step.total} label="ingest progress" />
      <span className="muted small">Reading the file on a worker: {step.message}</span>
    </div>
  );
}

function DatasetDetail({ id, onDeleted }: { id: string; onDeleted: () => void }) {
  const toasts = useToasts();
  const qc = useQueryClient();
  const detail = useQuery({
    queryKey: ["dataset", id],
    queryFn: () => call(api.GET("/api/datasets/{dataset_id}", { params: { path: { dataset_id: id } } })),
    // While a worker reads it, poll too (the task stream is the fast path).
    refetchInterval: (q) => (q.state.data?.status === "processing" ? 2000 : false),
  });
  const remove = useMutation({
    mutationFn: () => call(api.DELETE("/api/datasets/{dataset_id}", { params: { path: { dataset_id: id } } })),
    onSuccess: () => {
      void qc.invalidateQueries({ queryKey: ["datasets"] });
      onDeleted();
    },
    onError: toasts.error,
  });
  if (detail.isLoading) return <div className="center pad"><Spinner /></div>;
  if (detail.error) return <div className="callout callout-bad">{describeError(detail.error)}</div>;
  const d = detail.data;
  if (!d) return null;
  return (
    <div className="stack" data-testid="dataset-detail">
      <section className="card">
        <div className="row">
          <h2 className="grow" data-testid="dataset-name">{d.name}</h2>
          {d.read_only ? <span className="chip chip-accent">shared sample</span> : (
            <button className="btn btn-ghost btn-sm danger" onClick={() => confirm(`Delete ${d.name}?`) && remove.mutate()}>
              Delete
            </button>
          )}
        </div>
        {d.description ? <p className="muted">{d.description}</p> : null}
        {d.status === "processing" ? <IngestProgress dataset={d} /> : null}
        {d.status === "failed" ? (
          <div className="callout callout-bad" data-testid="dataset-error">
            <strong>{d.error?.type ?? "IngestFailed"}</strong>: {d.error?.message ?? "the file could not be read"}
          </div>
        ) : null}
        {d.status === "ready" ? (
          <>
            <div className="stats">
              <div className="stat"><div className="stat-value" data-testid="dataset-rows">{d.row_count.toLocaleString()}</div><div className="stat-label">rows</div></div>
              <div className="stat"><div className="stat-value">{d.columns.length}</div><div className="stat-label">columns</div></div>
              <div className="stat"><div className="stat-value">{d.format.toUpperCase()}</div><div className="stat-label">format</div></div>
              <div className="stat"><div className="stat-value">{bytes(d.size)}</div><div className="stat-label">size</div></div>
              {d.population ? <div className="stat"><div className="stat-value">{d.population}</div><div className="stat-label">population</div></div> : null}
            </div>
            <h3>Schema</h3>
            <div className="schema" data-testid="dataset-schema">
              {d.columns.map((c) => (
                <span key={c.name} className="schema-col">
                  <span className="mono">{c.name}</span> <span className="col-type">{c.type}</span>
                </span>
              ))}
            </div>
            <h3>Sample rows</h3>
            <DataTable columns={d.columns} rows={d.sample_rows as unknown[][]} totalRows={d.sample_rows.length} noDownload testId="sample-table" />
          </>
        ) : null}
      </section>
      {d.status === "ready" ? <AskCard dataset={d} /> : null}
    </div>
  );
}

export function DatasetsPage() {
  const { datasetId } = useParams();
  const navigate = useNavigate();
  const qc = useQueryClient();
  const toasts = useToasts();
  const list = useQuery({ queryKey: ["datasets"], queryFn: () => call(api.GET("/api/datasets")) });
  const selected = datasetId ?? list.data?.[0]?.id;

  return (
    <div className="page page-wide">
      <PageHeader title="Datasets" subtitle="Neuron population tables for circuit analysis: upload, inspect, then ask in plain language or SQL." />
      <div className="split">
        <div className="stack">
          <section className="card card-flush">
            <ul className="list" data-testid="dataset-list">
              {list.isLoading ? <li className="pad muted">Loading…</li> : null}
              {list.error ? <li className="pad callout callout-bad">{describeError(list.error)}</li> : null}
              {list.data?.map((d: Summary) => (
                <li key={d.id}>
                  <button className={`list-button ${d.id === selected ? "active" : ""}`} onClick={() => navigate(`/datasets/${d.id}`)} data-testid="dataset-item">
                    <div className="row">
                      <strong className="grow ellipsis">{d.name}</strong>
                      {d.status !== "ready" ? <StatusBadge state={d.status === "failed" ? "error" : "running"} /> : null}
                      {d.read_only ? <span className="chip chip-accent">sample</span> : <span className="chip">{d.format}</span>}
                    </div>
                    <div className="muted small">
                      {d.status === "ready" ? `${d.row_count.toLocaleString()} rows · ` : d.status === "failed" ? "could not be read · " : "reading… · "}
                      {bytes(d.size)} · {ago(d.created_at)}
                    </div>
                  </button>
                </li>
              ))}
            </ul>
          </section>
          <UploadCard
            onUploaded={(d) => {
              toasts.push(`Uploaded ${d.name}: a worker is reading it`, "ok");
              qc.setQueryData(["dataset", d.id], d);
              void qc.invalidateQueries({ queryKey: ["datasets"] });
              navigate(`/datasets/${d.id}`);
            }}
          />
        </div>
        <div>{selected ? <DatasetDetail key={selected} id={selected} onDeleted={() => navigate("/datasets")} /> : null}</div>
      </div>
    </div>
  );
}
