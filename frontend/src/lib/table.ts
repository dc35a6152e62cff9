/** Sorting and exporting result tables (rows are arrays, one value per column). */

export type Cell = unknown;
export type SortDir = "asc" | "desc";

function kind(v: Cell): number {
  if (v === null || v === undefined || v === "") return 3; // blanks last either way
  if (typeof v === "number" || typeof v === "bigint") return 0;
  if (typeof v === "boolean") return 1;
  return 2;
}

export function compareCells(a: Cell, b: Cell): number {
  const ka = kind(a);
  const kb = kind(b);
  if (ka !== kb) return ka - kb;
  if (ka === 3) return 0;
  if (ka === 0) return Number(a) - Number(b);
  if (ka === 1) return Number(a) - Number(b);
  const sa = typeof a === "string" ? a : JSON.stringify(a);
  const sb = typeof b === "string" ? b : JSON.stringify(b);
  const na = Number(sa);
  const nb = Number(sb);
  if (sa.trim() !== "" && sb.trim() !== "" && Number.isFinite(na) && Number.isFinite(nb)) return na - nb;
  return sa.localeCompare(sb, undefined, { numeric: true, sensitivity: "base" });
}

/** A stable sort by one column; blanks stay at the end in both directions. */
export function sortRows<R extends readonly Cell[]>(rows: readonly R[], column: number, dir: SortDir): R[] {
  return rows
    .map((row, index) => ({ row, index }))
    .sort((x, y) => {
      const a = x.row[column];
      const b = y.row[column];
      const blankA = kind(a) === 3;
      const blankB = kind(b) === 3;
      if (blankA !== blankB) return blankA ? 1 : -1;
      const c = compareCells(a, b);
      return (dir === "asc" ? c : -c) || x.index - y.index;
    })
    .map((x) => x.row);
}

export function formatCell(v: Cell): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6)));
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function csvField(v: Cell): string {
  const s = v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function toCsv(columns: readonly string[], rows: readonly (readonly Cell[])[]): string {
  return [columns.map(csvField).join(","), ...rows.map((r) => r.map(csvField).join(","))].join("\n") + "\n";
}
