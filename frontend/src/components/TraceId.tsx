import { Copy } from "lucide-react";
import "../ops.css";
import { useState } from "react";

/** A trace id (OpenTelemetry, 32 hex): shortened, the whole id in the title, one click copies it. */
export function TraceId({ id }: { id: string | null | undefined }) {
  const [copied, setCopied] = useState(false);
  if (!id) return null;
  const copy = () => {
    void navigator.clipboard?.writeText(id).then(() => {
      setCopied(true);
      window.setTimeout(() => setCopied(false), 1500);
    });
  };
  return (
    <button type="button" className="trace-id mono small" title={`trace ${id} (click to copy)`} onClick={copy} data-testid="trace-id" data-trace-id={id}>
      <Copy size={11} aria-hidden /> {copied ? "copied" : `trace ${id.slice(0, 8)}`}
    </button>
  );
}

/** The trace id the events of a task carry (all carry the same one). */
export function traceOf(events: { data?: Record<string, unknown> }[] | undefined): string | null {
  for (const e of events ?? []) {
    const id = e.data?.trace_id;
    if (typeof id === "string" && id) return id;
  }
  return null;
}
