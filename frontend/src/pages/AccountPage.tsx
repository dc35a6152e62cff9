import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api, call, type Schemas } from "../api/client";
import { describeError } from "../api/errors";
import { PageHeader } from "../components/Layout";
import { useToasts } from "../components/Toasts";
import { ago } from "../lib/format";

/** API keys (create: shown once; revoke), plus who you are, token usage and rate limits. */
export function AccountPage() {
  const qc = useQueryClient();
  const toasts = useToasts();
  const [name, setName] = useState("");
  const [created, setCreated] = useState<Schemas["ApiKeyCreated"] | null>(null);
  const me = useQuery({ queryKey: ["me"], queryFn: () => call(api.GET("/api/me")) });
  const keys = useQuery({ queryKey: ["api-keys"], queryFn: () => call(api.GET("/api/api-keys")) });
  // Live: spend moves as tools and turns finish.
  const usage = useQuery({
    queryKey: ["usage"],
    queryFn: () => call(api.GET("/api/usage", { params: { query: { days: 30 } } })),
    refetchInterval: 5000,
  });
  const limits = useQuery({ queryKey: ["rate-limit"], queryFn: () => call(api.GET("/api/rate-limit")) });

  const create = useMutation({
    mutationFn: (keyName: string) => call(api.POST("/api/api-keys", { body: { name: keyName } })),
    onSuccess: (key) => {
      setCreated(key);
      setName("");
      void qc.invalidateQueries({ queryKey: ["api-keys"] });
    },
  });
  const revoke = useMutation({
    mutationFn: (id: string) => call(api.DELETE("/api/api-keys/{key_id}", { params: { path: { key_id: id } } })),
    onSuccess: () => {
      toasts.push("Key revoked: it stops working now.", "ok");
      void qc.invalidateQueries({ queryKey: ["api-keys"] });
    },
    onError: toasts.error,
  });

  return (
    <div className="page">
      <PageHeader title="API keys" subtitle="Keys let scripts call the Corral API as you. A key is shown once; revoking it takes effect at once." />
      <div className="grid-2">
        <section className="card">
          <h2>Create a key</h2>
          <form
            className="row"
            onSubmit={(e) => {
              e.preventDefault();
              if (name.trim()) create.mutate(name.trim());
            }}
          >
            <input className="grow" value={name} onChange={(e) => setName(e.target.value)} placeholder="What is it for? e.g. nightly report" maxLength={100} data-testid="key-name" />
            <button className="btn btn-primary" disabled={!name.trim() || create.isPending} data-testid="key-create">
              Create key
            </button>
          </form>
          {create.error ? <div className="callout callout-bad">{describeError(create.error)}</div> : null}
          {created ? (
            <div className="callout callout-ok" data-testid="key-created">
              <div>
                <strong>{created.name}</strong>: copy it now, it will not be shown again.
              </div>
              <div className="row">
                <code className="secret grow" data-testid="key-value">
                  {created.key}
                </code>
                <button className="btn btn-sm" onClick={() => void navigator.clipboard?.writeText(created.key).then(() => toasts.push("Copied", "ok"))}>
                  Copy
                </button>
              </div>
              <p className="small muted">
                Use it as <code>Authorization: Bearer {created.prefix}…</code>
              </p>
            </div>
          ) : null}
          <h3>Your keys</h3>
          {keys.isLoading ? <p className="muted">Loading…</p> : null}
          {keys.error ? <div className="callout callout-bad">{describeError(keys.error)}</div> : null}
          {keys.data && keys.data.length === 0 ? <p className="muted">No keys yet.</p> : null}
          <ul className="list">
            {keys.data?.map((k) => (
              <li key={k.id} className="list-row" data-testid="key-row">
                <div className="grow">
                  <div>
                    <strong>{k.name}</strong> <code className="muted">{k.prefix}…</code>
                  </div>
                  <div className="muted small">
                    created {ago(k.created_at)} · {k.last_used_at ? `last used ${ago(k.last_used_at)}` : "never used"}
                  </div>
                </div>
                <button
                  className="btn btn-danger btn-sm"
                  onClick={() => {
                    if (confirm(`Revoke “${k.name}”? Programs using it will get 401 from now on.`)) revoke.mutate(k.id);
                  }}
                >
                  Revoke
                </button>
              </li>
            ))}
          </ul>
        </section>
        <div className="stack">
          <section className="card">
            <h2>You</h2>
            {me.data ? (
              <dl className="kv">
                <dt>User id</dt>
                <dd className="mono">{me.data.id}</dd>
                <dt>Name</dt>
                <dd>{me.data.name ?? "—"}</dd>
                <dt>Email</dt>
                <dd>{me.data.email ?? "—"}</dd>
                <dt>Signed in with</dt>
                <dd>{me.data.auth === "api_key" ? "an API key (keys cannot create keys)" : "a token"}</dd>
              </dl>
            ) : null}
          </section>
          <section className="card" data-testid="budgets">
            <h2>Today's budgets</h2>
            {usage.data?.budgets?.length ? (
              <>
                <ul className="list">
                  {usage.data.budgets.map((b) => (
                    <BudgetMeter key={b.kind} budget={b} />
                  ))}
                </ul>
                <p className="muted small">
                  Resets at {new Date(usage.data.budgets[0]?.resets_at ?? Date.now()).toLocaleString()} (midnight UTC). Over a budget, new work of
                  that kind is refused until then; an admin can raise yours.
                </p>
              </>
            ) : null}
          </section>
          <section className="card">
            <h2>Tokens used (30 days)</h2>
            {usage.data ? (
              <>
                <div className="stats">
                  <Stat label="model calls" value={usage.data.totals.calls ?? 0} />
                  <Stat label="prompt tokens" value={usage.data.totals.prompt_tokens ?? 0} />
                  <Stat label="completion tokens" value={usage.data.totals.completion_tokens ?? 0} />
                </div>
                {usage.data.rows.length ? (
                  <table className="data-table compact">
                    <thead>
                      <tr>
                        <th>day</th>
                        <th>model</th>
                        <th className="num">calls</th>
                        <th className="num">tokens</th>
                      </tr>
                    </thead>
                    <tbody>
                      {usage.data.rows.slice(-8).map((r) => (
                        <tr key={`${r.day}-${r.model}`}>
                          <td>{r.day}</td>
                          <td>{r.model}</td>
                          <td className="num">{r.calls}</td>
                          <td className="num">{r.total_tokens.toLocaleString()}</td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                ) : null}
              </>
            ) : null}
          </section>
          <section className="card">
            <h2>Rate limits</h2>
            {limits.data ? (
              limits.data.enabled ? (
                <ul className="list">
                  {Object.entries(limits.data.groups).map(([group, g]) => (
                    <li key={group} className="list-row">
                      <span className="grow">
                        <strong>{group}</strong> <span className="muted small">{g.limit}</span>
                      </span>
                      <span className="mono">
                        {g.remaining}/{g.amount} left
                      </span>
                    </li>
                  ))}
                </ul>
              ) : (
                <p className="muted">Rate limits are off on this server.</p>
              )
            ) : null}
          </section>
        </div>
      </div>
    </div>
  );
}

type Budget = Schemas["BudgetOut"];

const BUDGET_LABELS: Record<string, string> = { tokens: "model tokens", cpu_seconds: "sandbox CPU-seconds", rows: "analysis rows scanned" };

export function BudgetMeter({ budget }: { budget: Budget }) {
  const label = BUDGET_LABELS[budget.kind] ?? budget.kind;
  const limit = budget.limit ?? null;
  const pct = limit ? Math.min(100, (budget.spent / limit) * 100) : 0;
  const fmt = (n: number) => (n >= 100 ? Math.round(n).toLocaleString() : String(Math.round(n * 100) / 100));
  return (
    <li className="list-row budget-row" data-testid={`budget-${budget.kind}`} data-exhausted={budget.exhausted ? "true" : "false"}>
      <span className="grow">
        <strong>{label}</strong>
        <div className="meter" role="meter" aria-label={label} aria-valuemin={0} aria-valuemax={limit ?? 0} aria-valuenow={budget.spent}>
          <div className={`meter-fill ${budget.exhausted ? "meter-bad" : pct > 80 ? "meter-warn" : ""}`} style={{ width: `${pct}%` }} />
        </div>
      </span>
      <span className="mono small">
        {fmt(budget.spent)} / {limit === null ? "no limit" : fmt(limit)}
        {budget.exhausted ? <span className="badge badge-bad">used up</span> : null}
      </span>
    </li>
  );
}

function Stat({ label, value }: { label: string; value: number }) {
  return (
    <div className="stat">
      <div className="stat-value">{value.toLocaleString()}</div>
      <div className="stat-label">{label}</div>
    </div>
  );
}
