import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Pencil, Plus, Trash2 } from "lucide-react";
import { useEffect, useState } from "react";
import { useNavigate } from "react-router-dom";
import { api, call, type Schemas } from "../api/client";
import { ago } from "../lib/format";
import { useToasts } from "./Toasts";

type Thread = Schemas["ThreadOut"];

function useDebounced<T>(value: T, ms: number): T {
  const [v, setV] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setV(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return v;
}

/** Conversations: new, search (title), rename inline, delete. */
export function ThreadsSidebar({ activeId }: { activeId: string | undefined }) {
  const qc = useQueryClient();
  const toasts = useToasts();
  const navigate = useNavigate();
  const [search, setSearch] = useState("");
  const q = useDebounced(search.trim(), 250);
  const [editing, setEditing] = useState<string | null>(null);
  const [title, setTitle] = useState("");
  const threads = useQuery({
    queryKey: ["threads", q],
    queryFn: () => call(api.GET("/api/threads", { params: { query: { q: q || undefined, limit: 100 } } })),
  });

  const create = useMutation({
    mutationFn: () => call(api.POST("/api/threads", { body: {} })),
    onSuccess: (t) => {
      void qc.invalidateQueries({ queryKey: ["threads"] });
      navigate(`/chat/${t.id}`);
    },
    onError: toasts.error,
  });
  const rename = useMutation({
    mutationFn: ({ id, newTitle }: { id: string; newTitle: string }) =>
      call(api.PATCH("/api/threads/{thread_id}", { params: { path: { thread_id: id } }, body: { title: newTitle } })),
    onSuccess: () => void qc.invalidateQueries({ queryKey: ["threads"] }),
    onError: toasts.error,
  });
  const remove = useMutation({
    mutationFn: (id: string) => call(api.DELETE("/api/threads/{thread_id}", { params: { path: { thread_id: id } } })),
    onSuccess: (_, id) => {
      void qc.invalidateQueries({ queryKey: ["threads"] });
      if (id === activeId) navigate("/chat");
      toasts.push("Conversation deleted", "ok");
    },
    onError: toasts.error,
  });

  const startEdit = (t: Thread) => {
    setEditing(t.id);
    setTitle(t.title);
  };
  const commit = (t: Thread) => {
    const value = title.trim();
    setEditing(null);
    if (value && value !== t.title) rename.mutate({ id: t.id, newTitle: value.slice(0, 200) });
  };

  return (
    <aside className="threads" aria-label="Conversations">
      <div className="threads-head">
        <button className="btn btn-primary btn-block" onClick={() => create.mutate()} disabled={create.isPending} data-testid="new-thread">
          <Plus size={16} /> New conversation
        </button>
        <input className="search" type="search" placeholder="Search conversations" value={search} onChange={(e) => setSearch(e.target.value)} data-testid="thread-search" />
      </div>
      <ul className="threads-list">
        {threads.isLoading ? <li className="muted small pad">Loading…</li> : null}
        {threads.data?.length === 0 ? <li className="muted small pad">{q ? `No conversation titled “${q}”.` : "No conversations yet."}</li> : null}
        {threads.data?.map((t) => (
          <li key={t.id} className={`thread ${t.id === activeId ? "active" : ""}`} data-testid="thread-item">
            {editing === t.id ? (
              <input
                className="thread-edit"
                autoFocus
                value={title}
                maxLength={200}
                onChange={(e) => setTitle(e.target.value)}
                onBlur={() => commit(t)}
                onKeyDown={(e) => {
                  if (e.key === "Enter") commit(t);
                  if (e.key === "Escape") setEditing(null);
                }}
                data-testid="thread-rename-input"
              />
            ) : (
              <button className="thread-link" onClick={() => navigate(`/chat/${t.id}`)} onDoubleClick={() => startEdit(t)}>
                <span className="thread-title">{t.title}</span>
                <span className="thread-time">{ago(t.updated_at)}</span>
              </button>
            )}
            <div className="thread-actions">
              <button className="icon-btn" title="Rename" onClick={() => startEdit(t)} data-testid="thread-rename">
                <Pencil size={14} />
              </button>
              <button
                className="icon-btn danger"
                title="Delete"
                data-testid="thread-delete"
                onClick={() => {
                  if (confirm(`Delete “${t.title}”, its messages and files?`)) remove.mutate(t.id);
                }}
              >
                <Trash2 size={14} />
              </button>
            </div>
          </li>
        ))}
      </ul>
    </aside>
  );
}
