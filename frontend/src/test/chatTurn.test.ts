import { describe, expect, it } from "vitest";
import { applyTurnEvent, newTurn, type LiveTurn } from "../lib/chatTurn";

function apply(turn: LiveTurn, ...events: [string, Record<string, unknown>][]): LiveTurn {
  return events.reduce((t, [kind, data]) => applyTurnEvent(t, kind, data), turn);
}

describe("a turn's events", () => {
  it("drops unsaved text when another server resumes the turn, keeps saved text", () => {
    const turn = apply(
      newTurn("t", "hi", "turn-1"),
      ["turn_started", { message_id: "m1", model: "primary" }],
      ["text", { delta: "Let me look." }],
      ["message_saved", { message_id: "a1" }],
      ["tool_call_started", { call_id: "c1", name: "run_python", arguments: {}, task_id: "k1" }],
      ["tool_result", { call_id: "c1", name: "run_python", task_id: "k1", status: "done", output: {} }],
      ["text", { delta: "The answer is" }],
      ["resumed", { resumes: 1 }],
      ["text", { delta: "The answer is 42." }],
      ["message_saved", { message_id: "a2" }],
      ["done", { message_id: "a2" }],
    );
    expect(turn.userMessageId).toBe("m1");
    expect(turn.blocks.map((b) => (b.kind === "text" ? b.text : "tools"))).toEqual(["Let me look.", "tools", "The answer is 42."]);
    expect(turn.status).toBe("done");
    expect(turn.resumed).toBe(1);
  });

  it("a replayed tool_call_started does not add the card twice; cancel ends stopped", () => {
    const started: [string, Record<string, unknown>] = ["tool_call_started", { call_id: "c1", name: "echo", arguments: {}, task_id: "k1" }];
    const turn = apply(newTurn("t", "x", "turn-1"), started, started, ["cancel_requested", {}], ["cancelled", { reason: "stopped" }]);
    expect(turn.blocks).toEqual([{ kind: "tools", callIds: ["c1"] }]);
    expect(turn.status).toBe("stopped");
  });

  it("an error says what to do", () => {
    const turn = apply(newTurn("t", "x"), ["error", { type: "ModelError", message: "model primary is unreachable" }]);
    expect(turn.status).toBe("error");
    expect(turn.error).toContain("unreachable");
    expect(turn.hint).toContain("CORRAL_LLM__MODELS");
  });
});
