/** A tool call as the user sees it: one state machine fed by the chat stream and the task's own
 * event stream, in whatever order they arrive. Terminal states never go back. */

export type ToolState = "pending" | "waiting" | "queued" | "running" | "done" | "error" | "cancelled" | "timeout";

export const TERMINAL: ReadonlySet<ToolState> = new Set(["done", "error", "cancelled", "timeout"]);

export interface ToolProgress {
  current: number | null;
  total: number | null;
  message: string;
}

export interface ToolCallView {
  callId: string;
  name: string;
  arguments: unknown;
  taskId: string | null;
  state: ToolState;
  /** Every state this call went through, in order (what the tests check). */
  history: ToolState[];
  progress: ToolProgress | null;
  /** The presented output (figure URLs etc.); set by tool_result or a re-attach. */
  output: unknown;
  error: { type: string; message: string } | null;
  worker: string | null;
  /** Held by fair share: how many of the user's own calls on that queue go first. */
  waiting?: { ahead: number; queue: string; cap: number } | null;
  /** The trace id its task events carry (OpenTelemetry), for finding the call in a trace view. */
  traceId?: string | null;
}

export function newToolCall(callId: string, name: string, args: unknown, taskId: string | null): ToolCallView {
  return {
    callId,
    name,
    arguments: args,
    taskId,
    state: taskId ? "queued" : "pending",
    history: [taskId ? "queued" : "pending"],
    progress: null,
    output: undefined,
    error: null,
    worker: null,
  };
}

// waiting and queued rank alike: a held call is released (queued) and its place may be re-said.
const RANK: Record<ToolState, number> = { pending: 0, waiting: 1, queued: 1, running: 2, done: 3, error: 3, cancelled: 3, timeout: 3 };

function moveTo(view: ToolCallView, state: ToolState): ToolCallView {
  if (view.state === state) return view;
  if (TERMINAL.has(view.state)) return view; // terminal is final
  if (RANK[state] < RANK[view.state]) return view; // never backwards (events may race)
  return { ...view, state, history: [...view.history, state] };
}

/** An event of `/api/tasks/{id}/events` (type + its fields). */
export interface TaskStreamEvent {
  type: string;
  [field: string]: unknown;
}

export function applyTaskEvent(view: ToolCallView, event: TaskStreamEvent): ToolCallView {
  if (typeof event.trace_id === "string" && event.trace_id && view.traceId !== event.trace_id) {
    view = { ...view, traceId: event.trace_id };
  }
  switch (event.type) {
    case "waiting": {
      if (view.state !== "pending" && view.state !== "queued" && view.state !== "waiting") return view;
      const ahead = typeof event.ahead === "number" ? event.ahead : 0;
      const cap = typeof event.cap === "number" ? event.cap : 0;
      return { ...moveTo(view, "waiting"), waiting: { ahead, queue: String(event.queue ?? ""), cap } };
    }
    case "queued":
      return { ...moveTo(view, "queued"), waiting: null };
    case "started":
      return { ...moveTo(view, "running"), worker: typeof event.worker === "string" ? event.worker : view.worker };
    case "progress": {
      if (TERMINAL.has(view.state)) return view;
      const next = moveTo(view, "running");
      return {
        ...next,
        progress: {
          current: typeof event.current === "number" ? event.current : null,
          total: typeof event.total === "number" ? event.total : null,
          message: typeof event.message === "string" ? event.message : "",
        },
      };
    }
    case "done":
      return moveTo(view, "done");
    case "error":
      return {
        ...moveTo(view, "error"),
        error: view.error ?? { type: String(event.error_type ?? "Error"), message: String(event.message ?? "") },
      };
    case "cancelled":
      return {
        ...moveTo(view, "cancelled"),
        error: view.error ?? { type: "Cancelled", message: String(event.reason ?? "cancelled") },
      };
    default:
      return view;
  }
}

/** Chat stream events about this call: tool_progress and tool_result. */
export function applyChatToolEvent(view: ToolCallView, kind: string, data: Record<string, unknown>): ToolCallView {
  if (kind === "tool_progress") return applyTaskEvent(view, { ...data, type: "progress" });
  if (kind === "tool_waiting") return applyTaskEvent(view, { ...data, type: "waiting" });
  if (kind !== "tool_result") return view;
  const status = String(data.status ?? "error");
  const state: ToolState =
    status === "done" ? "done" : status === "cancelled" ? "cancelled" : status === "timeout" ? "timeout" : "error";
  const err = data.error as { type?: string; message?: string } | null | undefined;
  // A result is authoritative: it carries the output even if the task stream already said "done".
  const moved = TERMINAL.has(view.state) ? view : moveTo(view, state);
  return {
    ...moved,
    output: data.output ?? moved.output,
    error: err ? { type: String(err.type ?? "Error"), message: String(err.message ?? "") } : moved.error,
  };
}

/** A call read back from the thread's history (`MessageOut.tool_calls`). */
export function fromHistory(call: {
  call_id: string;
  name: string;
  arguments: unknown;
  task_id?: string | null;
  status: string;
  result?: unknown;
  error_type?: string | null;
  error_message?: string | null;
  trace_id?: string | null;
}): ToolCallView {
  const view = { ...newToolCall(call.call_id, call.name, call.arguments, call.task_id ?? null), traceId: call.trace_id ?? null };
  const known: Record<string, ToolState> = { done: "done", error: "error", cancelled: "cancelled", timeout: "timeout" };
  const state = known[call.status];
  if (!state) return { ...view, state: "running", history: [...view.history, "running"] };
  return {
    ...view,
    state,
    history: [...view.history, state],
    output: call.result ?? undefined,
    error: call.error_type ? { type: call.error_type, message: call.error_message ?? "" } : null,
  };
}

export function isActive(view: ToolCallView): boolean {
  return !TERMINAL.has(view.state);
}
