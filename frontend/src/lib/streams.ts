/** The app's resumable event streams: a task's, a pipeline run's, a chat turn's. */
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

const TERMINAL_TURN = new Set(["done", "error", "cancelled"]);

/** A chat turn's events (`/api/turns/{id}/events`): from the start, resumable. The turn runs on
 * the server whatever happens to this connection; only its cancel endpoint stops it. */
export function followTurnEvents(
  turnId: string,
  signal: AbortSignal,
  onEvent: (event: SseEvent) => void,
  onStatus?: (status: StreamStatus, detail?: string) => void,
): Promise<StreamEnd> {
  return guarded(() =>
    streamSse({
      url: `/api/turns/${encodeURIComponent(turnId)}/events`,
      headers: authHeaders(),
      signal,
      onEvent,
      onStatus,
      resume: true,
      idleTimeoutMs: IDLE_TIMEOUT_MS,
      maxRetries: 30,
      isTerminal: (e) => TERMINAL_TURN.has(e.event),
    }),
  );
}
