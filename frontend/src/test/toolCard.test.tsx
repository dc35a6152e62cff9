import { fireEvent, render, screen } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import { ToolCallCard } from "../components/ToolCallCard";
import { applyChatToolEvent, applyTaskEvent, newToolCall } from "../lib/toolState";

describe("<ToolCallCard>", () => {
  it("shows each state live: queued, running with progress, done with stdout and figures", () => {
    const onCancel = vi.fn();
    let view = newToolCall("c1", "run_python", { code: "plot()" }, "task-123456789");
    const { rerender } = render(<ToolCallCard view={view} onCancel={onCancel} />);
    const card = () => screen.getByTestId("tool-card");
    expect(card().getAttribute("data-state")).toBe("queued");
    expect(screen.getByText("waiting for a worker…")).toBeTruthy();
    expect(screen.getByTestId("tool-code").textContent).toBe("plot()");

    view = applyTaskEvent(view, { type: "waiting", queue: "python_q", ahead: 2, cap: 4 });
    rerender(<ToolCallCard view={view} onCancel={onCancel} />);
    expect(card().getAttribute("data-state")).toBe("waiting");
    expect(screen.getByText("waiting: 2 ahead of you (you already have 4 running on python_q)")).toBeTruthy();

    view = applyTaskEvent(applyTaskEvent(view, { type: "started", worker: "w1" }), { type: "progress", current: 1, total: 4, message: "rendering" });
    rerender(<ToolCallCard view={view} onCancel={onCancel} />);
    expect(card().getAttribute("data-state")).toBe("running");
    expect(screen.getByText("rendering")).toBeTruthy();
    expect(screen.getByRole("progressbar").getAttribute("aria-valuenow")).toBe("25");
    fireEvent.click(screen.getByRole("button", { name: "Cancel" }));
    expect(onCancel).toHaveBeenCalledOnce();

    view = applyChatToolEvent(view, "tool_result", {
      status: "done",
      output: { stdout: "ok\n", stderr: "", figures: [{ key: "u/f/1", name: "figure-1.png", url: "/blob/1.png" }], duration_s: 0.5, backend: "bwrap" },
    });
    rerender(<ToolCallCard view={view} onCancel={onCancel} />);
    expect(card().getAttribute("data-state")).toBe("done");
    expect(card().getAttribute("data-history")).toBe("queued,waiting,running,done");
    expect(screen.queryByRole("progressbar")).toBeNull();
    expect(screen.queryByRole("button", { name: "Cancel" })).toBeNull();
    expect(screen.getByTestId("stdout").textContent).toBe("ok\n");
    const img = screen.getByTestId("figure") as HTMLImageElement;
    expect(img.getAttribute("src")).toBe("/blob/1.png");
    fireEvent.click(img);
    expect(screen.getByTestId("lightbox")).toBeTruthy();
  });

  it("shows why a call ended: error and cancelled", () => {
    const base = newToolCall("c", "run_python", { code: "x" }, "t");
    const { rerender } = render(<ToolCallCard view={applyTaskEvent(base, { type: "error", error_type: "TimeLimitExceeded", message: "over 600 s" })} />);
    expect(screen.getByTestId("tool-error").textContent).toBe("TimeLimitExceeded: over 600 s");
    rerender(<ToolCallCard view={applyTaskEvent(base, { type: "cancelled", reason: "stopped by user" })} />);
    expect(screen.getByTestId("tool-state").textContent).toBe("cancelled");
    expect(screen.getByTestId("tool-error").textContent).toBe("Cancelled: stopped by user");
  });

  it("renders an analysis result as a sortable table", () => {
    const view = applyChatToolEvent(newToolCall("c", "circuit_population_analysis", { dataset_id: "d", question: "per layer?" }, "t"), "tool_result", {
      status: "done",
      output: { sql: "SELECT 1", columns: [{ name: "layer", type: "VARCHAR" }, { name: "n", type: "BIGINT" }], rows: [["L1", 3], ["L2", 9]], row_count: 2 },
    });
    render(<ToolCallCard view={view} />);
    expect(screen.getByTestId("analysis-sql").textContent).toBe("SELECT 1");
    expect(screen.getByTestId("result-table").querySelectorAll("tbody tr")).toHaveLength(2);
  });
});
