import { render, screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { BudgetMeter } from "../pages/AccountPage";

describe("<BudgetMeter>", () => {
  it("shows today's spend against the limit and says when it is used up", () => {
    const resets_at = "2026-12-04T00:00:00Z";
    const { rerender } = render(
      <ul>
        <BudgetMeter budget={{ kind: "cpu_seconds", limit: 3600, spent: 1200, remaining: 2400, exhausted: false, resets_at }} />
      </ul>,
    );
    const row = screen.getByTestId("budget-cpu_seconds");
    expect(row.textContent).toContain("sandbox CPU-seconds");
    expect(row.textContent).toContain("1,200 / 3,600");
    expect(screen.getByRole("meter").getAttribute("aria-valuenow")).toBe("1200");
    expect(row.getAttribute("data-exhausted")).toBe("false");
    rerender(
      <ul>
        <BudgetMeter budget={{ kind: "tokens", limit: 100, spent: 110, remaining: 0, exhausted: true, resets_at }} />
      </ul>,
    );
    expect(screen.getByTestId("budget-tokens").textContent).toContain("used up");
    rerender(
      <ul>
        <BudgetMeter budget={{ kind: "rows", limit: null, spent: 5, remaining: null, exhausted: false, resets_at }} />
      </ul>,
    );
    expect(screen.getByTestId("budget-rows").textContent).toContain("no limit");
  });
});
