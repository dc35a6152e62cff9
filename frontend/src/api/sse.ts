/** Server-sent events over fetch (so the Authorization header goes along), with resume.
 *
 * The app's event ids are Redis stream ids: after a dropped connection (network error, the server
 * closing early, or no bytes for `idleTimeoutMs` — the app pings every 15 s) we reconnect with
 * `Last-Event-ID` and the stream continues exactly after the last event we handled. POST streams
 * (a chat turn) are never re-sent: `resume: false` makes a drop an error instead.
 */
import { createParser } from "eventsource-parser";
import { ApiError, NetworkError, errorFromResponse } from "./errors";

export interface SseEvent {
  id?: string;
  event: string;
  data: string;
}

export type StreamStatus = "connecting" | "open" | "reconnecting" | "closed";

export interface StreamOptions {
  url: string;
  method?: "GET" | "POST";
  body?: unknown;
  headers?: Record<string, string>;
  signal: AbortSignal;
  onEvent: (event: SseEvent) => void;
  /** Stop (successfully) after this event, e.g. a task's `done`. */
  isTerminal?: (event: SseEvent) => boolean;
  /** Reconnect with Last-Event-ID when the connection drops. */
  resume?: boolean;
  /** Start after this event id. */
  lastEventId?: string;
  /** No bytes at all for this long counts as a dropped connection. */
  idleTimeoutMs?: number;
  /** Waits between reconnects; the last one repeats. */
  retryDelaysMs?: number[];
  /** Give up after this many reconnects in a row without an event. */
  maxRetries?: number;
  onStatus?: (status: StreamStatus, detail?: string) => void;
  fetchImpl?: typeof fetch;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

export type StreamEnd = "terminal" | "ended" | "aborted";

const defaultSleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });

class IdleTimeout extends Error {}

/** Read one connection; returns "terminal" or "ended" (the server closed the stream). */
async function readOnce(
  opts: StreamOptions,
  lastId: { value?: string },
  onOpen: () => void,
): Promise<"terminal" | "ended"> {
  const doFetch = opts.fetchImpl ?? fetch;
  const headers: Record<string, string> = { Accept: "text/event-stream", ...opts.headers };
  if (lastId.value) headers["Last-Event-ID"] = lastId.value;
  let body: string | undefined;
  if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    headers["Content-Type"] = "application/json";
  }
  const connection = new AbortController();
  const signal = AbortSignal.any([opts.signal, connection.signal]);
  let idle = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    if (!opts.idleTimeoutMs) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      idle = true;
      connection.abort();
    }, opts.idleTimeoutMs);
  };
  try {
    arm();
    let response: Response;
    try {
      response = await doFetch(opts.url, { method: opts.method ?? "GET", headers, body, signal });
    } catch (err) {
      if (opts.signal.aborted) throw err;
      if (idle) throw new IdleTimeout("no answer from the server");
      throw new NetworkError("connection to the server failed");
    }
    if (!response.ok) throw await errorFromResponse(response);
    if (!response.body) throw new NetworkError("the server sent no event stream");
    onOpen();
    let terminal = false;
    const parser = createParser({
      onEvent(message) {
        if (terminal) return;
        const event: SseEvent = { id: message.id, event: message.event ?? "message", data: message.data };
        if (message.id) lastId.value = message.id;
        opts.onEvent(event);
        if (opts.isTerminal?.(event)) terminal = true;
      },
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        let chunk: ReadableStreamReadResult<string>;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (opts.signal.aborted) throw err;
          if (idle) throw new IdleTimeout("the event stream went quiet");
          throw new NetworkError("the event stream was interrupted");
        }
        if (chunk.done) break;
        arm();
        parser.feed(chunk.value);
        if (terminal) return "terminal";
      }
    } finally {
      reader.cancel().catch(() => undefined);
    }
    return terminal ? "terminal" : "ended";
  } finally {
    clearTimeout(timer);
  }
}

function retryable(err: unknown): boolean {
  if (err instanceof IdleTimeout || err instanceof NetworkError) return true;
  return err instanceof ApiError && (err.status >= 500 || err.status === 429);
}

/** Follow an event stream until a terminal event, the end, an abort, or a fatal error (thrown). */
export async function streamSse(opts: StreamOptions): Promise<StreamEnd> {
  const sleep = opts.sleep ?? defaultSleep;
  const delays = opts.retryDelaysMs ?? [500, 1000, 2000, 4000];
  const maxRetries = opts.maxRetries ?? 8;
  const lastId = { value: opts.lastEventId };
  let failures = 0;
  opts.onStatus?.("connecting");
  for (;;) {
    if (opts.signal.aborted) return "aborted";
    const before = lastId.value;
    let outcome: "terminal" | "ended";
    try {
      outcome = await readOnce(opts, lastId, () => opts.onStatus?.("open"));
    } catch (err) {
      if (opts.signal.aborted) {
        opts.onStatus?.("closed");
        return "aborted";
      }
      if (lastId.value !== before) failures = 0;
      if (!opts.resume || !retryable(err) || failures >= maxRetries) {
        opts.onStatus?.("closed", err instanceof Error ? err.message : String(err));
        throw err instanceof IdleTimeout ? new NetworkError(`${err.message}; gave up after ${failures} reconnects`, true) : err;
      }
      const retryAfter = err instanceof ApiError && err.retryAfterS !== null ? err.retryAfterS * 1000 : 0;
      const delay = Math.max(retryAfter, delays[Math.min(failures, delays.length - 1)] ?? 1000);
      failures += 1;
      opts.onStatus?.("reconnecting", err instanceof Error ? err.message : String(err));
      await sleep(delay, opts.signal);
      continue;
    }
    if (outcome === "terminal" || !opts.resume) {
      opts.onStatus?.("closed");
      return outcome;
    }
    // The server ended the stream before a terminal event: resume where we stopped.
    if (lastId.value === before) failures += 1;
    else failures = 0;
    if (failures >= maxRetries) {
      opts.onStatus?.("closed", "the stream kept ending without news");
      throw new NetworkError("the event stream kept closing early");
    }
    opts.onStatus?.("reconnecting", "stream ended early");
    await sleep(delays[Math.min(failures, delays.length - 1)] ?? 1000, opts.signal);
  }
}

/** Parse an event's JSON data, or an empty object. */
export function eventData<T = Record<string, unknown>>(event: SseEvent): T {
  try {
    return (event.data ? JSON.parse(event.data) : {}) as T;
  } catch {
    return {} as T;
  }
}
