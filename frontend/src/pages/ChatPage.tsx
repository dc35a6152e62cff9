import { useQuery, useQueryClient } from "@tanstack/react-query";
import { ArrowUp, Square } from "lucide-react";
import { useCallback, useEffect, useRef, useState } from "react";
import { useNavigate, useParams } from "react-router-dom";
import { api, call, type Schemas } from "../api/client";
import { describeError } from "../api/errors";
import { eventData } from "../api/sse";
import { FigureRefresh } from "../components/Figures";
import { Markdown } from "../components/Markdown";
import { Spinner } from "../components/StatusBadge";
import { ThreadsSidebar } from "../components/ThreadsSidebar";
import { useToasts } from "../components/Toasts";
import { ToolCallCard } from "../components/ToolCallCard";
import type { LiveTurn } from "../lib/chatTurn";
import { followTaskEvents } from "../lib/streams";
import { applyTaskEvent, fromHistory, isActive, type TaskStreamEvent, type ToolCallView } from "../lib/toolState";
import { attachTurn, cancelToolCall, dismissTurn, sendMessage, stopTurn, useLiveTurn } from "../lib/turnStore";
import { ApiError } from "../api/errors";

type Message = Schemas["MessageOut"];

const SUGGESTIONS = [
  "Plot a damped sine wave and tell me its period.",
  "In the sample cortical column, how many neurons are there per layer?",
  "Simulate 1000 coin flips with numpy and show a histogram.",
];

/** A saved tool call; if it was still running when saved, follow its task until it ends. */
function HistoryToolCard({ call: saved }: { call: Schemas["ToolCallOut"] }) {
  const [view, setView] = useState<ToolCallView>(() => fromHistory(saved));
  const toasts = useToasts();
  useEffect(() => {
    const initial = fromHistory(saved);
    setView(initial);
    if (!isActive(initial) || !saved.task_id) return;
    const ctrl = new AbortController();
    let current = initial;
    followTaskEvents(saved.task_id, ctrl.signal, (e) => {
      current = applyTaskEvent(current, { ...eventData(e), type: e.event } as TaskStreamEvent);
      setView(current);
    }).catch(() => undefined);
    return () => ctrl.abort();
  }, [saved]);
  const cancel = () =>
    call(api.POST("/api/tasks/{task_id}/cancel", { params: { path: { task_id: saved.task_id as string } } })).catch(toasts.error);
  // A figure URL from an old conversation has expired: re-attach once for fresh ones.
  const [refreshed, setRefreshed] = useState(false);
  const refresh = () => {
    if (refreshed || !saved.task_id) return;
    setRefreshed(true);
    call(api.GET("/api/tools/results/{task_id}", { params: { path: { task_id: saved.task_id } } }))
      .then((r) => r.status === "done" && setView((v) => ({ ...v, output: r.output })))
      .catch(() => undefined);
  };
  return (
    <FigureRefresh.Provider value={refresh}>
      <ToolCallCard view={view} onCancel={cancel} />
    </FigureRefresh.Provider>
  );
}

function SavedMessage({ message }: { message: Message }) {
  if (message.role === "tool" || message.role === "system") return null;
  if (message.role === "user") {
    return (
      <div className="msg msg-user" data-testid="msg-user">
        <div className="bubble">{message.content}</div>
      </div>
    );
  }
  return (
    <div className="msg msg-assistant" data-testid="msg-assistant">
      <div className="avatar avatar-bot">C</div>
      <div className="msg-body">
        {message.content ? <Markdown text={message.content} /> : null}
        {message.tool_calls?.length ? (
          <div className="tool-group">
            {message.tool_calls?.map((c) => (
              <HistoryToolCard key={c.call_id} call={c} />
            ))}
          </div>
        ) : null}
        {message.status !== "complete" ? <div className="muted small">reply {message.status === "cancelled" ? "stopped" : message.status}</div> : null}
      </div>
    </div>
  );
}

/** No model is configured: say exactly what to set, with a line to copy per kind of server. */
function SetupCard({ setup }: { setup: Schemas["SetupHelp"] }) {
  return (
    <div className="callout setup-card" data-testid="setup-card">
      <h2>Connect a language model</h2>
      <p>{setup.detail}</p>
      <ul>
        {setup.settings.map((s) => (
          <li key={s}>
            <code>{s}</code>
          </li>
        ))}
      </ul>
      {setup.examples.map((e) => (
        <div key={e.provider} className="setup-example" data-testid="setup-example">
          <div className="muted small">{e.provider}</div>
          <pre className="mono small">{e.env}</pre>
        </div>
      ))}
    </div>
  );
}

function LiveMessage({ turn, showUser, onCancel }: { turn: LiveTurn; showUser: boolean; onCancel: (taskId: string) => void }) {
  const waiting = turn.status === "streaming" && turn.blocks.length === 0;
  return (
    <>
      {showUser && turn.userText ? (
        <div className="msg msg-user" data-testid="msg-user">
          <div className="bubble">{turn.userText}</div>
        </div>
      ) : null}
      {turn.turnId || turn.userText || turn.error ? (
        <div className="msg msg-assistant" data-testid="msg-assistant-live" data-status={turn.status}>
          <div className="avatar avatar-bot">C</div>
          <div className="msg-body">
            {waiting ? (
              <div className="typing" aria-label="The assistant is thinking">
                <span />
                <span />
                <span />
              </div>
            ) : null}
            {turn.blocks.map((b, i) =>
              b.kind === "text" ? (
                <Markdown key={i} text={b.text} />
              ) : (
                <div className="tool-group" key={i}>
                  {b.callIds.map((id) => {
                    const card = turn.cards[id];
                    return card ? <ToolCallCard key={id} view={card} onCancel={card.taskId ? () => onCancel(card.taskId as string) : undefined} /> : null;
                  })}
                </div>
              ),
            )}
            {turn.queued ? <div className="muted small">waiting for the reply before it…</div> : null}
            {turn.resumed ? (
              <div className="muted small" data-testid="turn-resumed">
                continued by another server
              </div>
            ) : null}
            {turn.status === "stopping" ? <div className="muted small">stopping…</div> : null}
            {turn.status === "stopped" ? <div className="muted small">stopped</div> : null}
            {turn.error ? (
              <div className="callout callout-bad" data-testid="turn-error">
                <div>{turn.error}</div>
                {turn.hint ? <div className="small">{turn.hint}</div> : null}
              </div>
            ) : null}
          </div>
        </div>
      ) : null}
    </>
  );
}

export function ChatPage() {
  const { threadId } = useParams();
  const navigate = useNavigate();
  const qc = useQueryClient();
  const toasts = useToasts();
  const [draft, setDraft] = useState("");
  const [sendError, setSendError] = useState<{ message: string; hint?: string } | null>(null);
  const scroller = useRef<HTMLDivElement>(null);

  const thread = useQuery({
    queryKey: ["thread", threadId],
    enabled: !!threadId,
    queryFn: () => call(api.GET("/api/threads/{thread_id}", { params: { path: { thread_id: threadId as string } } })),
  });
  const messages = useQuery({
    queryKey: ["messages", threadId],
    enabled: !!threadId,
    queryFn: () => call(api.GET("/api/threads/{thread_id}/messages", { params: { path: { thread_id: threadId as string }, query: { limit: 200 } } })),
  });

  const onFinished = useCallback(
    async (id: string) => {
      await qc.refetchQueries({ queryKey: ["messages", id] });
      void qc.invalidateQueries({ queryKey: ["threads"] });
      void qc.invalidateQueries({ queryKey: ["thread", id] });
    },
    [qc],
  );
  const models = useQuery({
    queryKey: ["llm-models"],
    queryFn: () => call(api.GET("/api/llm/models")),
    staleTime: 60_000,
  });
  const setup = models.data && !models.data.configured ? models.data.setup : null;
  const turn = useLiveTurn(threadId);
  const busy = turn?.status === "streaming" || turn?.status === "stopping";
  const runningTurnId = thread.data?.running_turn_id;

  useEffect(() => {
    setSendError(null);
  }, [threadId]);
  // A reply still being written (after a reload, in another tab): show it live again.
  useEffect(() => {
    if (threadId && runningTurnId) void attachTurn(threadId, runningTurnId, onFinished);
  }, [threadId, runningTurnId, onFinished]);
  useEffect(() => {
    const el = scroller.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [messages.data, turn]);

  async function submit(text: string) {
    const content = text.trim();
    if (!content || busy) return;
    if (setup) {
      // No model yet: say so (the setup card shows what to set) instead of saving a message.
      const fresh = await models.refetch();
      if (fresh.data && !fresh.data.configured) {
        setSendError({ message: fresh.data.setup?.detail ?? "No language model is configured." });
        return;
      }
    }
    let id = threadId;
    if (!id) {
      try {
        const created = await call(api.POST("/api/threads", { body: {} }));
        id = created.id;
        void qc.invalidateQueries({ queryKey: ["threads"] });
        navigate(`/chat/${id}`);
      } catch (err) {
        toasts.error(err);
        return;
      }
    }
    setDraft("");
    setSendError(null);
    dismissTurn(id);
    const result = await sendMessage(id, content, onFinished);
    if (result.unsent) {
      // Not sent (busy thread, rate limit, no model configured): say why and keep the text.
      setDraft(content);
      const err = result.error;
      if (err instanceof ApiError && err.kind === "no-model-configured") void models.refetch();
      setSendError({
        message: describeError(err),
        hint:
          err instanceof ApiError && err.kind === "turn-in-progress"
            ? "Wait for the reply above, or press Stop, then send again."
            : err instanceof ApiError && err.kind === "rate-limited"
              ? "Wait a moment, then send again."
              : undefined,
      });
    }
  }

  const allItems = messages.data?.items ?? [];
  // While a turn is live, what it saved after the user's message is shown by the live view.
  const cut = turn?.userMessageId ? allItems.findIndex((m) => m.id === turn.userMessageId) : -1;
  const items = cut >= 0 ? allItems.slice(0, cut + 1) : allItems;
  const empty = !turn && items.length === 0;
  return (
    <div className="chat">
      <ThreadsSidebar activeId={threadId} />
      <section className="conversation">
        <header className="conv-head">
          <h1 className="conv-title" data-testid="thread-title">
            {threadId ? (thread.data?.title ?? "…") : "New conversation"}
          </h1>
          {thread.data?.model ? <span className="chip">{thread.data.model}</span> : null}
          {turn?.model ? <span className="chip">{turn.model}</span> : null}
        </header>
        <div className="messages" ref={scroller}>
          {messages.error ? <div className="callout callout-bad">{describeError(messages.error)}</div> : null}
          {messages.isLoading && threadId ? (
            <div className="center pad">
              <Spinner />
            </div>
          ) : null}
          {setup ? <SetupCard setup={setup} /> : null}
          {empty && !messages.isLoading && !setup ? (
            <div className="welcome">
              <h2>What should we work out?</h2>
              <p className="muted">The assistant runs Python, analyses circuit datasets and calls other models on Corral's workers — you watch each tool call live.</p>
              <div className="suggestions">
                {SUGGESTIONS.map((s) => (
                  <button key={s} className="suggestion" onClick={() => void submit(s)}>
                    {s}
                  </button>
                ))}
              </div>
            </div>
          ) : null}
          {items.map((m) => (
            <SavedMessage key={m.id} message={m} />
          ))}
          {turn ? <LiveMessage turn={turn} showUser={cut < 0} onCancel={(id) => void cancelToolCall(id)} /> : null}
        </div>
        {sendError ? (
          <div className="composer-error" data-testid="send-error">
            <span className="grow">
              Not sent: {sendError.message}
              {sendError.hint ? <span className="muted"> — {sendError.hint}</span> : null}
            </span>
            <button className="icon-btn" onClick={() => setSendError(null)} aria-label="Dismiss">
              ×
            </button>
          </div>
        ) : null}
        <form
          className="composer"
          onSubmit={(e) => {
            e.preventDefault();
            void submit(draft);
          }}
        >
          <textarea
            value={draft}
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === "Enter" && !e.shiftKey) {
                e.preventDefault();
                void submit(draft);
              }
            }}
            placeholder="Ask anything — Enter to send, Shift+Enter for a new line"
            rows={2}
            data-testid="composer"
          />
          {busy ? (
            <button type="button" className="btn btn-danger" onClick={() => threadId && void stopTurn(threadId)} disabled={turn?.status === "stopping"} data-testid="stop">
              <Square size={13} fill="currentColor" /> Stop
            </button>
          ) : (
            <button type="submit" className="btn btn-primary" disabled={!draft.trim()} data-testid="send">
              <ArrowUp size={16} /> Send
            </button>
          )}
        </form>
      </section>
    </div>
  );
}
