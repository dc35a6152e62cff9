import { Download } from "lucide-react";
import { useMemo, useState } from "react";
import { formatCell, sortRows, toCsv, type Cell, type SortDir } from "../lib/table";

export interface Column {
  name: string;
  type?: string;
}

interface Props {
  columns: Column[];
  rows: Cell[][];
  /** Rows shown before "show more". */
  pageSize?: number;
  /** Total rows of the full result when `rows` is only its start. */
  totalRows?: number;
  /** Where the full result can be downloaded (else the rows here become a CSV). */
  downloadUrl?: string | null;
  downloadName?: string;
  caption?: string;
  testId?: string;
  /** Hide the download link (e.g. a dataset's preview rows). */
  noDownload?: boolean;
}

const NUMERIC = /INT|DOUBLE|FLOAT|DECIMAL|REAL|NUMERIC|HUGEINT/i;

/** A result table: click a header to sort (asc, desc, off), first rows with "show more",
 * and "download full result". */
export function DataTable({ columns, rows, pageSize = 50, totalRows, downloadUrl, downloadName = "result.csv", caption, testId, noDownload }: Props) {
  const [sort, setSort] = useState<{ column: number; dir: SortDir } | null>(null);
  const [shown, setShown] = useState(pageSize);
  const sorted = useMemo(() => (sort ? sortRows(rows, sort.column, sort.dir) : rows), [rows, sort]);
  const visible = sorted.slice(0, shown);
  const total = totalRows ?? rows.length;

  const cycle = (column: number) =>
    setSort((s) => (!s || s.column !== column ? { column, dir: "asc" } : s.dir === "asc" ? { column, dir: "desc" } : null));

  // Small results are whole here: save them as CSV, built on click (no lingering object URLs).
  const saveCsv = () => {
    const url = URL.createObjectURL(new Blob([toCsv(columns.map((c) => c.name), rows)], { type: "text/csv" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = downloadName;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };

  return (
    <div className="table-wrap" data-testid={testId}>
      <div className="table-toolbar">
        <span className="muted small" data-testid="table-count">
          {caption ? `${caption} · ` : ""}
          showing {visible.length.toLocaleString()} of {total.toLocaleString()} row{total === 1 ? "" : "s"}
        </span>
        {noDownload ? null : downloadUrl ? (
          <a className="btn btn-ghost btn-sm" href={downloadUrl} target="_blank" rel="noreferrer" data-testid="download-result">
            <Download size={14} /> Download full result
          </a>
        ) : (
          <button className="btn btn-ghost btn-sm" onClick={saveCsv} data-testid="download-result">
            <Download size={14} /> Download full result (CSV)
          </button>
        )}
      </div>
      <div className="table-scroll">
        <table className="data-table">
          <thead>
            <tr>
              {columns.map((c, i) => {
                const active = sort?.column === i;
                return (
                  <th key={`${c.name}-${i}`} aria-sort={active ? (sort.dir === "asc" ? "ascending" : "descending") : "none"}>
                    <button className="th-button" onClick={() => cycle(i)} title="Sort">
                      <span>{c.name}</span>
                      {c.type ? <span className="col-type">{c.type}</span> : null}
                      <span className={`sort-arrow ${active ? "on" : ""}`}>{active ? (sort.dir === "asc" ? "▲" : "▼") : "↕"}</span>
                    </button>
                  </th>
                );
              })}
            </tr>
          </thead>
          <tbody>
            {visible.map((row, r) => (
              <tr key={r}>
                {columns.map((c, i) => (
                  <td key={i} className={c.type && NUMERIC.test(c.type) ? "num" : typeof row[i] === "number" ? "num" : undefined}>
                    {formatCell(row[i])}
                  </td>
                ))}
              </tr>
            ))}
            {visible.length === 0 ? (
              <tr>
                <td colSpan={Math.max(1, columns.length)} className="muted center">
                  no rows
                </td>
              </tr>
            ) : null}
          </tbody>
        </table>
      </div>
      {sorted.length > shown ? (
        <button className="btn btn-ghost btn-sm show-more" onClick={() => setShown((n) => n + pageSize * 4)}>
          Show more rows ({(sorted.length - shown).toLocaleString()} more here)
        </button>
      ) : null}
    </div>
  );
}
