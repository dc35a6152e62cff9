import { describe, expect, it } from "vitest";
import { traceOf } from "../components/TraceId";
import { applyTaskEvent, newToolCall } from "../lib/toolState";

const TRACE = "0af7651916cd43dd8448eb211c80319c";

describe("trace ids", () => {
  it("a tool card takes the trace id its task events carry", () => {
    let v = newToolCall("c1", "run_python", {}, "t1");
    expect(v.traceId ?? null).toBeNull();
    v = applyTaskEvent(v, { type: "queued", queue: "python_q", trace_id: TRACE });
    v = applyTaskEvent(v, { type: "started", worker: "w" });
    expect(v.traceId).toBe(TRACE);
    expect(v.state).toBe("running");
  });

  it("the tasks page finds it in the events' data", () => {
    expect(traceOf([{ data: { type: "queued" } }, { data: { type: "started", trace_id: TRACE } }])).toBe(TRACE);
    expect(traceOf([])).toBeNull();
  });
});
