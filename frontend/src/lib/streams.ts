/** The app's resumable event streams (a task's, a pipeline run's) and the chat turn stream. */
import { signOut } from "../api/auth";
import { authHeaders } from "../api/client";
import { ApiError } from "../api/errors";
import { streamSse, type SseEvent, type StreamEnd, type StreamStatus } from "../api/sse";

const TERMINAL_TASK = new Set(["done", "error", "cancelled"]);
export const IDLE_TIMEOUT_MS = 45_000; // the app pings every 15 s

async function guarded(run: () => Promise<StreamEnd>): Promise<StreamEnd> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) signOut(`${err.message} — sign in again.`);
    throw err;
  }
}

export function followTaskEvents(
  taskId: string,
  signal: AbortSignal,
  onEvent: (event: SseEvent) => void,
  onStatus?: (status: StreamStatus, detail?: string) => void,
): Promise<StreamEnd> {
  return guarded(() =>
    streamSse({
      url: `/api/tasks/${encodeURIComponent(taskId)}/events`,
      headers: authHeaders(),
      signal,
      onEvent,
      onStatus,
      resume: true,
      idleTimeoutMs: IDLE_TIMEOUT_MS,
      isTerminal: (e) => TERMINAL_TASK.has(e.event),
    }),
  );
}

export function followRunEvents(
  runId: string,
  signal: AbortSignal,
  onEvent: (event: SseEvent) => void,
  onStatus?: (status: StreamStatus, detail?: string) => void,
): Promise<StreamEnd> {
  return guarded(() =>
    streamSse({
      url: `/api/pipelines/runs/${encodeURIComponent(runId)}/events`,
      headers: authHeaders(),
      signal,
      onEvent,
      onStatus,
      resume: true,
      idleTimeoutMs: IDLE_TIMEOUT_MS,
      isTerminal: (e) => {
        if (e.event !== "run") return false;
        try {
          const status = (JSON.parse(e.data) as { status?: string }).status;
          return status === "succeeded" || status === "failed" || status === "cancelled";
        } catch {
          return false;
        }
      },
    }),
  );
}

/** A chat turn: POSTed once, never re-sent (a dropped turn is stopped by the server). */
export function streamChatTurn(
  threadId: string,
  content: string,
  signal: AbortSignal,
  onEvent: (event: SseEvent) => void,
): Promise<StreamEnd> {
  return guarded(() =>
    streamSse({
      url: `/api/threads/${encodeURIComponent(threadId)}/messages`,
      method: "POST",
      body: { content },
      headers: authHeaders(),
      signal,
      onEvent,
      resume: false,
      idleTimeoutMs: IDLE_TIMEOUT_MS,
      isTerminal: (e) => e.event === "done",
    }),
  );
}
