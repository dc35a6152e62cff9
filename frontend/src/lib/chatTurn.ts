/** The assistant's turn as it streams: text blocks and tool-call groups in arrival order.
 * A pure reducer (tested) — the hook around it only does I/O. */
import { applyChatToolEvent, applyTaskEvent, newToolCall, type TaskStreamEvent, type ToolCallView } from "./toolState";

export type Block = { kind: "text"; text: string } | { kind: "tools"; callIds: string[] };
export type TurnStatus = "streaming" | "stopping" | "done" | "stopped" | "error";

export interface LiveTurn {
  threadId: string;
  userText: string;
  blocks: Block[];
  cards: Record<string, ToolCallView>;
  status: TurnStatus;
  error: string | null;
  model: string | null;
  totalTokens: number;
}

export function newTurn(threadId: string, userText: string): LiveTurn {
  return { threadId, userText, blocks: [], cards: {}, status: "streaming", error: null, model: null, totalTokens: 0 };
}

type Data = Record<string, unknown>;

export function applyTurnEvent(turn: LiveTurn, kind: string, data: Data): LiveTurn {
  switch (kind) {
    case "turn_started":
      return { ...turn, model: typeof data.model === "string" ? data.model : turn.model };
    case "text": {
      const delta = String(data.delta ?? "");
      const last = turn.blocks[turn.blocks.length - 1];
      const blocks: Block[] =
        last?.kind === "text" ? [...turn.blocks.slice(0, -1), { kind: "text", text: last.text + delta }] : [...turn.blocks, { kind: "text", text: delta }];
      return { ...turn, blocks };
    }
    case "tool_call_started": {
      const callId = String(data.call_id);
      const card = newToolCall(callId, String(data.name ?? "tool"), data.arguments, typeof data.task_id === "string" ? data.task_id : null);
      const last = turn.blocks[turn.blocks.length - 1];
      const blocks: Block[] =
        last?.kind === "tools" ? [...turn.blocks.slice(0, -1), { kind: "tools", callIds: [...last.callIds, callId] }] : [...turn.blocks, { kind: "tools", callIds: [callId] }];
      return { ...turn, blocks, cards: { ...turn.cards, [callId]: turn.cards[callId] ?? card } };
    }
    case "tool_progress":
    case "tool_result": {
      const callId = String(data.call_id);
      const card = turn.cards[callId];
      if (!card) return turn;
      return { ...turn, cards: { ...turn.cards, [callId]: applyChatToolEvent(card, kind, data) } };
    }
    case "usage":
      return { ...turn, totalTokens: turn.totalTokens + Number(data.total_tokens ?? 0) };
    case "error":
      return { ...turn, status: "error", error: `${String(data.type ?? "Error")}: ${String(data.message ?? "")}` };
    case "done":
      return turn.status === "streaming" || turn.status === "stopping" ? { ...turn, status: turn.status === "stopping" ? "stopped" : "done" } : turn;
    default:
      return turn;
  }
}

/** An event from one call's own task stream (queued/started/progress/done/...). */
export function applyCardTaskEvent(turn: LiveTurn, callId: string, event: TaskStreamEvent): LiveTurn {
  const card = turn.cards[callId];
  if (!card) return turn;
  return { ...turn, cards: { ...turn.cards, [callId]: applyTaskEvent(card, event) } };
}
