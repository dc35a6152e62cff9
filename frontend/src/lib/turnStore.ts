/** Live chat turns, kept outside any component: a turn belongs to its thread, not to the page
 * that started it. Sending answers `202 {turn_id}` at once; the turn's event stream is then
 * followed here, so navigating (the landing page moving to the new thread's URL), re-rendering
 * or re-mounting never interrupts it, and a reload re-attaches from `running_turn_id`.
 * A pure reducer (`chatTurn.ts`) builds the view; this module only does I/O. */
import { useSyncExternalStore } from "react";
import { api, call } from "../api/client";
import { describeError } from "../api/errors";
import { eventData } from "../api/sse";
import { applyCardTaskEvent, applyTurnEvent, newTurn, type LiveTurn } from "./chatTurn";
import { followTaskEvents, followTurnEvents } from "./streams";
import { isActive, type TaskStreamEvent } from "./toolState";

interface Entry {
  turn: LiveTurn;
  streams: AbortController;
}

type OnFinished = (threadId: string) => Promise<void>;

const entries = new Map<string, Entry>();
const finished = new Set<string>(); // turn ids already followed to their end
const listeners = new Set<() => void>();

function notify() {
  for (const listener of listeners) listener();
}

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function liveTurn(threadId: string | undefined): LiveTurn | null {
  return threadId ? (entries.get(threadId)?.turn ?? null) : null;
}

/** The live turn of a thread (re-renders on every event). */
export function useLiveTurn(threadId: string | undefined): LiveTurn | null {
  return useSyncExternalStore(subscribe, () => liveTurn(threadId));
}

function update(threadId: string, fn: (t: LiveTurn) => LiveTurn) {
  const entry = entries.get(threadId);
  if (!entry) return;
  entry.turn = fn(entry.turn);
  notify();
}

function followCard(threadId: string, entry: Entry, callId: string, taskId: string) {
  followTaskEvents(taskId, entry.streams.signal, (event) =>
    update(threadId, (t) => applyCardTaskEvent(t, callId, { ...eventData(event), type: event.event } as TaskStreamEvent)),
  ).catch(() => undefined); // the turn's stream still reports the result
}

async function follow(threadId: string, turnId: string, onFinished: OnFinished) {
  const entry = entries.get(threadId);
  if (!entry) return;
  try {
    const end = await followTurnEvents(turnId, entry.streams.signal, (event) => {
      const data = eventData(event);
      update(threadId, (t) => applyTurnEvent(t, event.event, data));
      if (event.event === "tool_call_started" && typeof data.task_id === "string") followCard(threadId, entry, String(data.call_id), data.task_id);
    });
    if (end === "aborted") return;
    if (end === "ended") {
      update(threadId, (t) => (t.status === "streaming" ? { ...t, status: "error", error: "The reply's event stream ended early.", hint: "Reload the page: the reply goes on on the server and is shown again." } : t));
    }
  } catch (err) {
    if (entry.streams.signal.aborted) return;
    update(threadId, (t) => ({
      ...t,
      status: "error",
      error: `Lost the connection to the reply: ${describeError(err)}`,
      hint: "The reply goes on on the server. Reload the page to see it again.",
    }));
  }
  finished.add(turnId);
  // Let stopped tool calls report `cancelled` before the saved history replaces the live view.
  const deadline = Date.now() + 10_000;
  while (Object.values(entries.get(threadId)?.turn.cards ?? {}).some(isActive) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 150));
  }
  await onFinished(threadId).catch(() => undefined);
  const current = entries.get(threadId);
  if (current !== entry) return;
  entry.streams.abort();
  if (entry.turn.error) {
    // The saved history now shows the turn; keep the error note (and what to do) on screen.
    entry.turn = { ...entry.turn, userText: "", blocks: [], cards: {}, userMessageId: null };
  } else {
    entries.delete(threadId);
  }
  notify();
}

/** Send a message: `{unsent: true, error}` when the server refused it (nothing was saved). */
export async function sendMessage(threadId: string, content: string, onFinished: OnFinished): Promise<{ error: unknown; unsent: boolean }> {
  entries.get(threadId)?.streams.abort();
  const entry: Entry = { turn: newTurn(threadId, content), streams: new AbortController() };
  entries.set(threadId, entry);
  notify();
  let accepted: { turn_id: string; message_id: string };
  try {
    accepted = (await call(api.POST("/api/threads/{thread_id}/messages", { params: { path: { thread_id: threadId } }, body: { content } }))) as {
      turn_id: string;
      message_id: string;
    };
  } catch (err) {
    if (entries.get(threadId) === entry) entries.delete(threadId);
    notify();
    return { error: err, unsent: true };
  }
  update(threadId, (t) => ({ ...t, turnId: accepted.turn_id, userMessageId: accepted.message_id }));
  void follow(threadId, accepted.turn_id, onFinished);
  return { error: null, unsent: false };
}

/** Re-attach to a turn running on the server (after a reload, in another tab): replay it. */
export async function attachTurn(threadId: string, turnId: string, onFinished: OnFinished): Promise<void> {
  const current = entries.get(threadId);
  if (finished.has(turnId) || current?.turn.turnId === turnId) return;
  if (current && current.turn.turnId === null) return; // a send is on its way
  current?.streams.abort();
  const entry: Entry = { turn: newTurn(threadId, "", turnId), streams: new AbortController() };
  entries.set(threadId, entry);
  notify();
  try {
    const state = await call(api.GET("/api/turns/{turn_id}", { params: { path: { turn_id: turnId } } }));
    update(threadId, (t) => ({ ...t, userMessageId: state.user_message_id }));
  } catch {
    // the events still say which message it answers
  }
  await follow(threadId, turnId, onFinished);
}

/** Stop: the server cancels the turn's running tools and keeps what was said so far. */
export async function stopTurn(threadId: string): Promise<void> {
  const turn = liveTurn(threadId);
  if (!turn?.turnId || turn.status !== "streaming") return;
  update(threadId, (t) => ({ ...t, status: "stopping" }));
  try {
    await call(api.POST("/api/turns/{turn_id}/cancel", { params: { path: { turn_id: turn.turnId } } }));
  } catch (err) {
    update(threadId, (t) => (t.status === "stopping" ? { ...t, status: "streaming", error: `Could not stop the reply: ${describeError(err)}`, hint: "Try Stop again." } : t));
  }
}

export async function cancelToolCall(taskId: string): Promise<void> {
  await call(api.POST("/api/tasks/{task_id}/cancel", { params: { path: { task_id: taskId } } })).catch(() => undefined);
}

/** Forget a finished turn's error note (e.g. when the user sends again). */
export function dismissTurn(threadId: string): void {
  const entry = entries.get(threadId);
  if (entry && entry.turn.status !== "streaming" && entry.turn.status !== "stopping") {
    entry.streams.abort();
    entries.delete(threadId);
    notify();
  }
}
