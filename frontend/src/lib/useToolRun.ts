/** Run one tool from a page (code runner, datasets) and watch it live:
 * invoke with a short wait (fast results come straight back), else follow the task's events and
 * re-attach for the presented output once it ends. */
import { useCallback, useEffect, useRef, useState } from "react";
import { api, call } from "../api/client";
import { ApiError } from "../api/errors";
import { eventData } from "../api/sse";
import { applyChatToolEvent, applyTaskEvent, newToolCall, type TaskStreamEvent, type ToolCallView } from "./toolState";
import { followTaskEvents } from "./streams";

const FAST_PATH_S = 0.3;

export interface ToolRun {
  view: ToolCallView | null;
  error: unknown;
  connection: string | null;
  busy: boolean;
  run: (tool: string, args: Record<string, unknown>) => Promise<void>;
  cancel: () => Promise<void>;
  reset: () => void;
}

export function useToolRun(): ToolRun {
  const [view, setView] = useState<ToolCallView | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [connection, setConnection] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const controller = useRef<AbortController | null>(null);
  const taskId = useRef<string | null>(null);

  useEffect(() => () => controller.current?.abort(), []);

  const run = useCallback(async (tool: string, args: Record<string, unknown>) => {
    controller.current?.abort();
    const ctrl = new AbortController();
    controller.current = ctrl;
    taskId.current = null;
    setError(null);
    setConnection(null);
    setBusy(true);
    setView(newToolCall("local", tool, args, null));
    try {
      const first = await call(
        api.POST("/api/tools/{name}/invoke", {
          params: { path: { name: tool } },
          body: { arguments: args, timeout_s: FAST_PATH_S },
          signal: ctrl.signal,
        }),
      );
      taskId.current = first.task_id;
      let current: ToolCallView = { ...newToolCall("local", tool, args, first.task_id) };
      setView(current);
      if (first.status !== "timeout") {
        setView(applyChatToolEvent(current, "tool_result", first as unknown as Record<string, unknown>));
        return;
      }
      await followTaskEvents(
        first.task_id,
        ctrl.signal,
        (event) => {
          current = applyTaskEvent(current, { ...eventData(event), type: event.event } as TaskStreamEvent);
          setView(current);
        },
        (status, detail) => setConnection(status === "reconnecting" ? `reconnecting: ${detail ?? ""}` : null),
      );
      if (ctrl.signal.aborted) return;
      const final = await call(
        api.GET("/api/tools/results/{task_id}", {
          params: { path: { task_id: first.task_id }, query: { timeout_s: 10 } },
          signal: ctrl.signal,
        }),
      );
      current = applyChatToolEvent(current, "tool_result", final as unknown as Record<string, unknown>);
      setView(current);
    } catch (err) {
      if (!ctrl.signal.aborted) setError(err);
    } finally {
      if (controller.current === ctrl) setBusy(false);
    }
  }, []);

  const cancel = useCallback(async () => {
    const id = taskId.current;
    if (!id) {
      controller.current?.abort();
      setBusy(false);
      return;
    }
    try {
      await call(api.POST("/api/tasks/{task_id}/cancel", { params: { path: { task_id: id } } }));
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409)) setError(err);
    }
  }, []);

  const reset = useCallback(() => {
    controller.current?.abort();
    setView(null);
    setError(null);
    setBusy(false);
  }, []);

  return { view, error, connection, busy, run, cancel, reset };
}
