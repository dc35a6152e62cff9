/** The assistant's turn as it streams: text blocks and tool-call groups in arrival order.
 * A pure reducer (tested) — the hook around it only does I/O. */
import { applyChatToolEvent, applyTaskEvent, newToolCall, type TaskStreamEvent, type ToolCallView } from "./toolState";

export type Block = { kind: "text"; text: string } | { kind: "tools"; callIds: string[] };
export type TurnStatus = "streaming" | "stopping" | "done" | "stopped" | "error";

export interface LiveTurn {
  threadId: string;
  /** The turn resource (`/api/turns/{id}`), once the server accepted the message. */
  turnId: string | null;
  /** The user's saved message; saved history after it is shown live instead. */
  userMessageId: string | null;
  userText: string;
  blocks: Block[];
  cards: Record<string, ToolCallView>;
  status: TurnStatus;
  error: string | null;
  /** What the user can do about the error. */
  hint: string | null;
  model: string | null;
  totalTokens: number;
  /** Characters of text not saved yet (dropped when another server resumes the turn). */
  unsaved: number;
  resumed: number;
  queued: boolean;
}

export function newTurn(threadId: string, userText: string, turnId: string | null = null): LiveTurn {
  return {
    threadId,
    turnId,
    userMessageId: null,
    userText,
    blocks: [],
    cards: {},
    status: "streaming",
    error: null,
    hint: null,
    model: null,
    totalTokens: 0,
    unsaved: 0,
    resumed: 0,
    queued: false,
  };
}

/** What to do about a turn that ended with an error, by its type. */
export function errorHint(type: string): string {
  switch (type) {
    case "ModelError":
      return "The model did not answer. Check the model's settings (CORRAL_LLM__MODELS: base_url, api_key, model) and that its server is reachable, then send your message again.";
    case "TurnTimeout":
      return "The reply took longer than the turn's limit (CORRAL_CHAT__TURN_TIMEOUT_S). Ask again, perhaps in smaller steps.";
    default:
      return "Something failed inside Corral (the server log has the details). Send your message again; if it keeps failing, start a new conversation.";
  }
}

/** Remove the last `chars` characters of text (a resumed turn writes them again). */
function dropUnsaved(blocks: Block[], chars: number): Block[] {
  const last = blocks[blocks.length - 1];
  if (!chars || last?.kind !== "text") return blocks;
  const kept = last.text.slice(0, Math.max(0, last.text.length - chars));
  return kept ? [...blocks.slice(0, -1), { kind: "text", text: kept }] : blocks.slice(0, -1);
}

type Data = Record<string, unknown>;

export function applyTurnEvent(turn: LiveTurn, kind: string, data: Data): LiveTurn {
  switch (kind) {
    case "turn_started":
      return {
        ...turn,
        queued: false,
        model: typeof data.model === "string" ? data.model : turn.model,
        userMessageId: typeof data.message_id === "string" ? data.message_id : turn.userMessageId,
      };
    case "queued":
      return { ...turn, queued: true };
    case "text": {
      const delta = String(data.delta ?? "");
      const last = turn.blocks[turn.blocks.length - 1];
      const blocks: Block[] =
        last?.kind === "text" ? [...turn.blocks.slice(0, -1), { kind: "text", text: last.text + delta }] : [...turn.blocks, { kind: "text", text: delta }];
      return { ...turn, blocks, unsaved: turn.unsaved + delta.length };
    }
    case "message_saved":
      return { ...turn, unsaved: 0 };
    case "resumed":
      // Another server took the turn over: it re-issues the model call whose text was not saved.
      return { ...turn, blocks: dropUnsaved(turn.blocks, turn.unsaved), unsaved: 0, resumed: turn.resumed + 1 };
    case "cancel_requested":
      return turn.status === "streaming" ? { ...turn, status: "stopping" } : turn;
    case "cancelled":
      return { ...turn, status: "stopped" };
    case "tool_call_started": {
      const callId = String(data.call_id);
      const card = newToolCall(callId, String(data.name ?? "tool"), data.arguments, typeof data.task_id === "string" ? data.task_id : null);
      if (turn.cards[callId]) return turn; // already shown
      const last = turn.blocks[turn.blocks.length - 1];
      const blocks: Block[] =
        last?.kind === "tools" ? [...turn.blocks.slice(0, -1), { kind: "tools", callIds: [...last.callIds, callId] }] : [...turn.blocks, { kind: "tools", callIds: [callId] }];
      return { ...turn, blocks, unsaved: 0, cards: { ...turn.cards, [callId]: card } };
    }
    case "tool_progress":
    case "tool_waiting":
    case "tool_result": {
      const callId = String(data.call_id);
      const card = turn.cards[callId];
      if (!card) return turn;
      return { ...turn, cards: { ...turn.cards, [callId]: applyChatToolEvent(card, kind, data) } };
    }
    case "usage":
      return { ...turn, totalTokens: turn.totalTokens + Number(data.total_tokens ?? 0) };
    case "error": {
      const type = String(data.type ?? "Error");
      return { ...turn, status: "error", error: `${type}: ${String(data.message ?? "")}`, hint: errorHint(type) };
    }
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
