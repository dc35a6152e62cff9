import { describe, expect, it } from "vitest";
import { applyCardTaskEvent, applyTurnEvent, newTurn } from "../lib/chatTurn";
import { applyChatToolEvent, applyTaskEvent, fromHistory, newToolCall } from "../lib/toolState";

describe("tool call state machine", () => {
  it("goes queued → running (progress) → done and keeps the presented output", () => {
    let v = newToolCall("c1", "run_python", { code: "print(1)" }, "t1");
    expect(v.state).toBe("queued");
    v = applyTaskEvent(v, { type: "queued", queue: "python_q" });
    v = applyTaskEvent(v, { type: "started", worker: "python_q@host" });
    expect(v.state).toBe("running");
    expect(v.worker).toBe("python_q@host");
    v = applyTaskEvent(v, { type: "progress", current: 2, total: 4, message: "half" });
    expect(v.progress).toEqual({ current: 2, total: 4, message: "half" });
    v = applyTaskEvent(v, { type: "done" });
    v = applyChatToolEvent(v, "tool_result", { status: "done", output: { stdout: "1\n", figures: [] }, error: null });
    expect(v.state).toBe("done");
    expect(v.history).toEqual(["queued", "running", "done"]);
    expect(v.output).toEqual({ stdout: "1\n", figures: [] });
  });

  it("never leaves a terminal state, whatever arrives late", () => {
    let v = newToolCall("c1", "run_python", {}, "t1");
    v = applyTaskEvent(v, { type: "cancelled", reason: "stopped by user" });
    v = applyTaskEvent(v, { type: "progress", current: 1, total: 2, message: "late" });
    v = applyTaskEvent(v, { type: "started" });
    v = applyChatToolEvent(v, "tool_result", { status: "done", output: { stdout: "x" } });
    expect(v.state).toBe("cancelled");
    expect(v.history).toEqual(["queued", "cancelled"]);
    expect(v.error).toEqual({ type: "Cancelled", message: "stopped by user" });
    expect(v.progress).toBeNull();
  });

  it("does not go backwards when a late 'queued' follows 'started'", () => {
    let v = newToolCall("c1", "echo", {}, "t1");
    v = applyTaskEvent(v, { type: "started" });
    v = applyTaskEvent(v, { type: "queued" });
    expect(v.state).toBe("running");
  });

  it("maps error, timeout and cancelled results", () => {
    const base = newToolCall("c", "run_python", {}, "t");
    const err = applyChatToolEvent(base, "tool_result", { status: "error", error: { type: "SoftTimeLimit", message: "too slow" } });
    expect(err.state).toBe("error");
    expect(err.error).toEqual({ type: "SoftTimeLimit", message: "too slow" });
    expect(applyChatToolEvent(base, "tool_result", { status: "timeout" }).state).toBe("timeout");
    expect(applyChatToolEvent(base, "tool_result", { status: "cancelled" }).state).toBe("cancelled");
    const failed = applyTaskEvent(base, { type: "error", error_type: "Boom", message: "bad" });
    expect(failed.error).toEqual({ type: "Boom", message: "bad" });
  });

  it("a call refused before it started (no task) is pending then error", () => {
    let v = newToolCall("c", "run_python", "not json", null);
    expect(v.state).toBe("pending");
    v = applyChatToolEvent(v, "tool_result", { status: "error", error: { type: "InvalidArguments", message: "arguments must be a JSON object" } });
    expect(v.history).toEqual(["pending", "error"]);
  });

  it("reads saved calls back; unfinished ones count as running", () => {
    const trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    const done = fromHistory({ call_id: "a", name: "run_python", arguments: {}, task_id: "t", status: "done", result: { stdout: "hi" }, trace_id: trace });
    expect(done.state).toBe("done");
    expect(done.traceId).toBe(trace);
    expect(done.output).toEqual({ stdout: "hi" });
    const open = fromHistory({ call_id: "b", name: "run_python", arguments: {}, task_id: "t2", status: "started" });
    expect(open.state).toBe("running");
    expect(applyTaskEvent(open, { type: "cancelled" }).state).toBe("cancelled");
  });
});

describe("chat turn reducer", () => {
  it("joins text deltas, groups parallel tool calls and routes their events", () => {
    let t = newTurn("th", "plot it");
    t = applyTurnEvent(t, "turn_started", { model: "primary" });
    t = applyTurnEvent(t, "text", { delta: "Let me " });
    t = applyTurnEvent(t, "text", { delta: "plot." });
    t = applyTurnEvent(t, "tool_call_started", { call_id: "a", name: "run_python", arguments: { code: "1" }, task_id: "ta" });
    t = applyTurnEvent(t, "tool_call_started", { call_id: "b", name: "llm_generate", arguments: {}, task_id: "tb" });
    t = applyCardTaskEvent(t, "a", { type: "started" });
    t = applyTurnEvent(t, "tool_progress", { call_id: "b", current: 1, total: 3, message: "tokens" });
    t = applyTurnEvent(t, "tool_result", { call_id: "a", status: "done", output: { stdout: "" } });
    t = applyTurnEvent(t, "usage", { total_tokens: 40 });
    t = applyTurnEvent(t, "text", { delta: "Done." });
    t = applyTurnEvent(t, "usage", { total_tokens: 2 });
    t = applyTurnEvent(t, "done", {});
    expect(t.model).toBe("primary");
    expect(t.blocks).toEqual([
      { kind: "text", text: "Let me plot." },
      { kind: "tools", callIds: ["a", "b"] },
      { kind: "text", text: "Done." },
    ]);
    expect(t.cards.a?.history).toEqual(["queued", "running", "done"]);
    expect(t.cards.b?.state).toBe("running");
    expect(t.totalTokens).toBe(42);
    expect(t.status).toBe("done");
  });

  it("an error event ends the turn with its message; stop then done is 'stopped'", () => {
    const e = applyTurnEvent(newTurn("th", "x"), "error", { type: "ModelError", message: "provider down" });
    expect(e.status).toBe("error");
    expect(e.error).toBe("ModelError: provider down");
    const s = applyTurnEvent({ ...newTurn("th", "x"), status: "stopping" }, "done", {});
    expect(s.status).toBe("stopped");
  });
});

describe("fair share waiting", () => {
  it("shows a held call's place, moves up as it changes, and leaves it when released", () => {
    let v = newToolCall("w", "run_python", {}, "t-w");
    v = applyChatToolEvent(v, "tool_waiting", { call_id: "w", task_id: "t-w", queue: "python_q", ahead: 3, cap: 4 });
    expect(v.state).toBe("waiting");
    expect(v.waiting).toEqual({ ahead: 3, queue: "python_q", cap: 4 });
    v = applyTaskEvent(v, { type: "waiting", queue: "python_q", ahead: 1, cap: 4 });
    expect(v.waiting?.ahead).toBe(1);
    v = applyTaskEvent(v, { type: "queued", task_name: "python.run", queue: "python_q" });
    expect(v.state).toBe("queued");
    expect(v.waiting).toBeNull();
    v = applyTaskEvent(v, { type: "started", worker: "w1" });
    // A late "waiting" never pulls a running call back.
    expect(applyTaskEvent(v, { type: "waiting", queue: "python_q", ahead: 0 }).state).toBe("running");
    expect(v.history).toEqual(["queued", "waiting", "queued", "running"]);
  });
});
