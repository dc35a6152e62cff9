import { fireEvent, render, screen, within } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { DataTable } from "../components/DataTable";
import { compareCells, sortRows, toCsv } from "../lib/table";

describe("sorting rows", () => {
  const rows = [
    ["L5", 10, null],
    ["L23", 2.5, "b"],
    ["L1", 100, "a"],
    ["L4", null, "c"],
  ];

  it("sorts numbers numerically and strings naturally, blanks last both ways", () => {
    expect(sortRows(rows, 1, "asc").map((r) => r[1])).toEqual([2.5, 10, 100, null]);
    expect(sortRows(rows, 1, "desc").map((r) => r[1])).toEqual([100, 10, 2.5, null]);
    expect(sortRows(rows, 0, "asc").map((r) => r[0])).toEqual(["L1", "L4", "L5", "L23"]);
    expect(sortRows(rows, 2, "desc").map((r) => r[2])).toEqual(["c", "b", "a", null]);
  });

  it("is stable and compares numeric strings as numbers", () => {
    const same = [["a", 1], ["b", 1], ["c", 1]];
    expect(sortRows(same, 1, "desc").map((r) => r[0])).toEqual(["a", "b", "c"]);
    expect(compareCells("9", "10")).toBeLessThan(0);
    expect(compareCells(false, true)).toBeLessThan(0);
  });

  it("writes CSV with quoting", () => {
    expect(toCsv(["a", "b"], [["x,y", 'say "hi"'], [1, null]])).toBe('a,b\n"x,y","say ""hi"""\n1,\n');
  });
});

describe("<DataTable>", () => {
  const columns = [{ name: "layer", type: "VARCHAR" }, { name: "n", type: "BIGINT" }];
  const rows = [["L2", 5], ["L1", 20], ["L3", 1]];
  const firstColumn = () => within(screen.getByTestId("t")).getAllByRole("row").slice(1).map((r) => r.querySelector("td")?.textContent);

  it("cycles a header through ascending, descending and original order", () => {
    render(<DataTable columns={columns} rows={rows} testId="t" />);
    const header = screen.getByRole("button", { name: /^n/ });
    fireEvent.click(header);
    expect(firstColumn()).toEqual(["L3", "L2", "L1"]);
    expect(screen.getAllByRole("columnheader")[1]?.getAttribute("aria-sort")).toBe("ascending");
    fireEvent.click(header);
    expect(firstColumn()).toEqual(["L1", "L2", "L3"]);
    fireEvent.click(header);
    expect(firstColumn()).toEqual(["L2", "L1", "L3"]);
  });

  it("shows the first rows, more on request, and links the full result", () => {
    const many = Array.from({ length: 120 }, (_, i) => [`r${i}`, i]);
    render(<DataTable columns={columns} rows={many} pageSize={50} totalRows={5000} downloadUrl="https://files/result.parquet" testId="t" />);
    expect(screen.getByTestId("table-count").textContent).toContain("showing 50 of 5,000 rows");
    fireEvent.click(screen.getByRole("button", { name: /show more/i }));
    expect(screen.getByTestId("table-count").textContent).toContain("showing 120 of 5,000");
    expect(screen.getByTestId("download-result").getAttribute("href")).toBe("https://files/result.parquet");
  });
});
