/** Send a message and follow the turn: the chat stream, plus each tool call's own task stream
 * (for queued/started, which the chat stream does not carry, and to survive a dropped turn). */
import { useCallback, useEffect, useRef, useState } from "react";
import { api, call } from "../api/client";
import { ApiError, describeError } from "../api/errors";
import { eventData } from "../api/sse";
import { applyCardTaskEvent, applyTurnEvent, newTurn, type LiveTurn } from "./chatTurn";
import { followTaskEvents, streamChatTurn } from "./streams";
import { isActive, type TaskStreamEvent } from "./toolState";

export function useChatTurn(onFinished: (threadId: string) => Promise<void>) {
  const [turn, setTurn] = useState<LiveTurn | null>(null);
  const turnRef = useRef<LiveTurn | null>(null);
  const chat = useRef<AbortController | null>(null);
  const followers = useRef<AbortController>(new AbortController());

  const update = useCallback((fn: (t: LiveTurn) => LiveTurn) => {
    if (!turnRef.current) return;
    turnRef.current = fn(turnRef.current);
    setTurn(turnRef.current);
  }, []);

  const follow = useCallback(
    (callId: string, taskId: string) => {
      followTaskEvents(taskId, followers.current.signal, (event) =>
        update((t) => applyCardTaskEvent(t, callId, { ...eventData(event), type: event.event } as TaskStreamEvent)),
      ).catch(() => undefined); // the chat stream still reports the result
    },
    [update],
  );

  const settle = useCallback(
    async (threadId: string) => {
      // Let stopped tool calls report `cancelled` before the saved history replaces the live view.
      const deadline = Date.now() + 10_000;
      while (turnRef.current && Object.values(turnRef.current.cards).some(isActive) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 150));
      }
      await onFinished(threadId);
      const t = turnRef.current;
      if (t && t.status !== "streaming" && t.status !== "stopping") {
        // The saved history now shows the turn; keep only an error note, if any.
        turnRef.current = t.error ? { ...t, userText: "", blocks: [], cards: {} } : null;
        setTurn(turnRef.current);
      }
    },
    [onFinished],
  );

  const send = useCallback(
    async (threadId: string, content: string): Promise<{ error: unknown; unsent: boolean }> => {
      chat.current?.abort();
      const ctrl = new AbortController();
      chat.current = ctrl;
      turnRef.current = newTurn(threadId, content);
      setTurn(turnRef.current);
      try {
        const end = await streamChatTurn(threadId, content, ctrl.signal, (event) => {
          const data = eventData(event);
          update((t) => applyTurnEvent(t, event.event, data));
          if (event.event === "tool_call_started" && typeof data.task_id === "string") follow(String(data.call_id), data.task_id);
        });
        if (end === "ended") update((t) => (t.status === "streaming" ? { ...t, status: "error", error: "The connection closed before the reply finished." } : t));
      } catch (err) {
        if (err instanceof ApiError) {
          // Refused before the turn began (busy thread, rate limit, no model): nothing was saved.
          turnRef.current = null;
          setTurn(null);
          return { error: err, unsent: true };
        }
        if (!ctrl.signal.aborted) update((t) => ({ ...t, status: "error", error: describeError(err) }));
      }
      if (turnRef.current?.status === "stopping") update((t) => ({ ...t, status: "stopped" }));
      await settle(threadId);
      return { error: null, unsent: false };
    },
    [follow, settle, update],
  );

  /** Stop: cancel running tool calls (they end `cancelled`), then close the turn's stream. */
  const stop = useCallback(async () => {
    const current = turnRef.current;
    if (!current || current.status !== "streaming") return;
    update((t) => ({ ...t, status: "stopping" }));
    const active = Object.values(current.cards).filter((c) => isActive(c) && c.taskId);
    await Promise.all(
      active.map((c) =>
        call(api.POST("/api/tasks/{task_id}/cancel", { params: { path: { task_id: c.taskId as string } } })).catch(() => undefined),
      ),
    );
    chat.current?.abort();
  }, [update]);

  const cancelCall = useCallback(async (taskId: string) => {
    await call(api.POST("/api/tasks/{task_id}/cancel", { params: { path: { task_id: taskId } } })).catch(() => undefined);
  }, []);

  const clear = useCallback(() => {
    chat.current?.abort();
    followers.current.abort();
    followers.current = new AbortController();
    turnRef.current = null;
    setTurn(null);
  }, []);

  useEffect(() => () => {
    chat.current?.abort();
    followers.current.abort();
  }, []);

  return { turn, send, stop, cancelCall, clear };
}
