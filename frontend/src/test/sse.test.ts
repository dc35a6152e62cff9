import { describe, expect, it } from "vitest";
import { ApiError, NetworkError, errorFromResponse, parseDetail } from "../api/errors";
import { streamSse, type SseEvent } from "../api/sse";

/** A scripted server: each connection gets one plan (chunks, then end / a cut / an HTTP error). */
type Plan = { status?: number; headers?: Record<string, string>; body?: string; chunks?: string[]; cut?: boolean; hang?: boolean };

function fakeFetch(plans: Plan[]) {
  const calls: { url: string; headers: Record<string, string>; method: string; body?: string }[] = [];
  const impl = (async (url: string, init: RequestInit) => {
    calls.push({ url, headers: { ...(init.headers as Record<string, string>) }, method: String(init.method), body: init.body as string | undefined });
    const plan = plans.shift();
    if (!plan) throw new TypeError("no more connections scripted");
    if (plan.status && plan.status >= 400) return new Response(plan.body ?? "", { status: plan.status, headers: plan.headers });
    const encoder = new TextEncoder();
    const signal = init.signal as AbortSignal;
    const queue = [...(plan.chunks ?? [])];
    // One chunk per read, so a cut arrives after the data (as on a real connection).
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = queue.shift();
        if (next !== undefined) controller.enqueue(encoder.encode(next));
        else if (plan.cut) controller.error(new TypeError("network error"));
        else if (plan.hang) return new Promise<void>((resolve) => signal.addEventListener("abort", () => { controller.error(new DOMException("aborted", "AbortError")); resolve(); }));
        else controller.close();
      },
    });
    return new Response(stream, { status: 200, headers: { "Content-Type": "text/event-stream" } });
  }) as unknown as typeof fetch;
  return { impl, calls };
}

const noSleep = async () => undefined;
const taskTerminal = (e: SseEvent) => ["done", "error", "cancelled"].includes(e.event);

describe("streamSse", () => {
  it("parses events split across chunks, skips pings, stops at the terminal event", async () => {
    const { impl } = fakeFetch([
      { chunks: ["id: 1-0\nevent: queued\nda", 'ta: {"queue":"python_q"}\n\n: ping\n\n', "id: 2-0\nevent: started\ndata: {}\n\nid: 3-0\nevent: done\ndata: {}\n\n", "id: 4-0\nevent: extra\ndata: {}\n\n"] },
    ]);
    const seen: SseEvent[] = [];
    const end = await streamSse({ url: "/e", signal: new AbortController().signal, onEvent: (e) => seen.push(e), isTerminal: taskTerminal, fetchImpl: impl });
    expect(end).toBe("terminal");
    expect(seen.map((e) => [e.id, e.event])).toEqual([["1-0", "queued"], ["2-0", "started"], ["3-0", "done"]]);
    expect(JSON.parse(seen[0]!.data)).toEqual({ queue: "python_q" });
  });

  it("reconnects after a cut with Last-Event-ID and never repeats an event", async () => {
    const { impl, calls } = fakeFetch([
      { chunks: ["id: 1-0\nevent: queued\ndata: {}\n\nid: 2-0\nevent: started\ndata: {}\n\n"], cut: true },
      { status: 503, body: '{"detail":"restarting"}' },
      { chunks: ["id: 3-0\nevent: progress\ndata: {}\n\n"] }, // the server ends early: resume again
      { chunks: ["id: 4-0\nevent: done\ndata: {}\n\n"] },
    ]);
    const seen: string[] = [];
    const statuses: string[] = [];
    const end = await streamSse({
      url: "/api/tasks/t/events",
      headers: { Authorization: "Bearer x" },
      signal: new AbortController().signal,
      onEvent: (e) => seen.push(e.id ?? ""),
      onStatus: (s) => statuses.push(s),
      isTerminal: taskTerminal,
      resume: true,
      fetchImpl: impl,
      sleep: noSleep,
    });
    expect(end).toBe("terminal");
    expect(seen).toEqual(["1-0", "2-0", "3-0", "4-0"]);
    expect(calls.map((c) => c.headers["Last-Event-ID"])).toEqual([undefined, "2-0", "2-0", "3-0"]);
    expect(calls.every((c) => c.headers.Authorization === "Bearer x")).toBe(true);
    expect(statuses.filter((s) => s === "reconnecting")).toHaveLength(3);
  });

  it("starts after a given event id", async () => {
    const { impl, calls } = fakeFetch([{ chunks: ["id: 9-0\nevent: done\ndata: {}\n\n"] }]);
    await streamSse({ url: "/e", lastEventId: "8-0", signal: new AbortController().signal, onEvent: () => undefined, isTerminal: taskTerminal, fetchImpl: impl });
    expect(calls[0]?.headers["Last-Event-ID"]).toBe("8-0");
  });

  it("treats a silent connection as dropped (idle timeout) and resumes", async () => {
    const { impl, calls } = fakeFetch([{ chunks: ["id: 1-0\nevent: started\ndata: {}\n\n"], hang: true }, { chunks: ["id: 2-0\nevent: done\ndata: {}\n\n"] }]);
    const seen: string[] = [];
    const end = await streamSse({ url: "/e", signal: new AbortController().signal, onEvent: (e) => seen.push(e.id ?? ""), isTerminal: taskTerminal, resume: true, idleTimeoutMs: 30, fetchImpl: impl, sleep: noSleep });
    expect(end).toBe("terminal");
    expect(seen).toEqual(["1-0", "2-0"]);
    expect(calls[1]?.headers["Last-Event-ID"]).toBe("1-0");
  });

  it("does not retry client errors: 401 and 404 are thrown as ApiError", async () => {
    for (const status of [401, 404]) {
      const { impl, calls } = fakeFetch([{ status, body: JSON.stringify({ detail: `nope ${status}` }) }, { chunks: [] }]);
      const run = streamSse({ url: "/e", signal: new AbortController().signal, onEvent: () => undefined, resume: true, fetchImpl: impl, sleep: noSleep });
      await expect(run).rejects.toMatchObject({ status, message: `nope ${status}` });
      expect(calls).toHaveLength(1);
    }
  });

  it("a POST stream (chat turn) is never re-sent: a cut is an error", async () => {
    const { impl, calls } = fakeFetch([{ chunks: ["id: 1\nevent: text\ndata: {\"delta\":\"hi\"}\n\n"], cut: true }]);
    const seen: string[] = [];
    const run = streamSse({ url: "/api/threads/t/messages", method: "POST", body: { content: "hi" }, signal: new AbortController().signal, onEvent: (e) => seen.push(e.event), fetchImpl: impl, sleep: noSleep });
    await expect(run).rejects.toBeInstanceOf(NetworkError);
    expect(seen).toEqual(["text"]);
    expect(calls).toHaveLength(1);
    expect(calls[0]?.body).toBe('{"content":"hi"}');
  });

  it("gives up after maxRetries failed reconnects in a row", async () => {
    const { impl, calls } = fakeFetch(Array.from({ length: 10 }, () => ({ cut: true })));
    const run = streamSse({ url: "/e", signal: new AbortController().signal, onEvent: () => undefined, resume: true, maxRetries: 3, fetchImpl: impl, sleep: noSleep });
    await expect(run).rejects.toBeInstanceOf(NetworkError);
    expect(calls).toHaveLength(4);
  });

  it("waits at least Retry-After on a 429 before reconnecting", async () => {
    const { impl } = fakeFetch([{ status: 429, headers: { "Retry-After": "7" }, body: '{"detail":"slow down"}' }, { chunks: ["id: 1-0\nevent: done\ndata: {}\n\n"] }]);
    const waits: number[] = [];
    await streamSse({ url: "/e", signal: new AbortController().signal, onEvent: () => undefined, isTerminal: taskTerminal, resume: true, fetchImpl: impl, sleep: async (ms) => void waits.push(ms) });
    expect(waits).toEqual([7000]);
  });

  it("an abort ends quietly", async () => {
    const ctrl = new AbortController();
    const { impl } = fakeFetch([{ chunks: ["id: 1-0\nevent: started\ndata: {}\n\n"], hang: true }]);
    const run = streamSse({ url: "/e", signal: ctrl.signal, onEvent: () => ctrl.abort(), resume: true, fetchImpl: impl });
    await expect(run).resolves.toBe("aborted");
  });
});

describe("API errors", () => {
  it("says how long to wait on 429", async () => {
    const err = await errorFromResponse(new Response('{"detail":"limit 20 per 1 minute"}', { status: 429, headers: { "Retry-After": "12" } }));
    expect(err).toBeInstanceOf(ApiError);
    expect(err.retryAfterS).toBe(12);
    expect(err.message).toBe("Rate limited: limit 20 per 1 minute. Try again in 12 s.");
  });

  it("turns FastAPI validation details into field errors with paths", () => {
    const parsed = parseDetail({ detail: [{ loc: ["body", "steps", 1, "prompt_template"], msg: "Field required", type: "missing" }] });
    expect(parsed.fieldErrors).toEqual([{ path: ["steps", 1, "prompt_template"], message: "Field required" }]);
    expect(parsed.message).toBe("steps[1].prompt_template: Field required");
  });

  it("reads RFC 9457 problems: detail, field errors, kind and retry_after_s", async () => {
    const body = {
      type: "/errors/validation-error",
      title: "Unprocessable Content",
      status: 422,
      detail: "body.timeout_s: must be at most 600",
      errors: [{ loc: ["body", "timeout_s"], msg: "must be at most 600", type: "less_than_equal" }],
    };
    const err = await errorFromResponse(
      new Response(JSON.stringify(body), { status: 422, headers: { "Content-Type": "application/problem+json" } }),
    );
    expect(err.kind).toBe("validation-error");
    expect(err.message).toBe("body.timeout_s: must be at most 600");
    expect(err.fieldErrors).toEqual([{ path: ["timeout_s"], message: "must be at most 600" }]);
    const busy = await errorFromResponse(
      new Response(JSON.stringify({ type: "/errors/broker-unavailable", title: "t", status: 503, detail: "broker down", retry_after_s: 4.2 }), { status: 503 }),
    );
    expect(busy.retryAfterS).toBe(5);
    expect(busy.message).toBe("broker down Try again in 5 s.");
    const noModel = await errorFromResponse(
      new Response(JSON.stringify({ type: "/errors/no-model-configured", title: "No model configured", status: 503, detail: "set CORRAL_LLM__MODELS" }), { status: 503 }),
    );
    expect(noModel.kind).toBe("no-model-configured");
    expect(noModel.retryAfterS).toBeNull();
    expect(noModel.message).toBe("set CORRAL_LLM__MODELS");
  });

  it("falls back to the status text when the body says nothing", async () => {
    const err = await errorFromResponse(new Response("", { status: 503 }));
    expect(err.message).toBe("Service unavailable");
  });
});
