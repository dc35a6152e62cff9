import { createContext, useContext, useEffect, useState } from "react";

/** Saved conversations keep figure URLs that expire; a card can offer to fetch fresh ones. */
export const FigureRefresh = createContext<(() => void) | null>(null);

export interface FigureOut {
  url?: string;
  name?: string;
  key?: string;
  content_type?: string;
}

/** Figures inline; click one to see it large (Esc or a click closes). */
export function Figures({ figures }: { figures: FigureOut[] }) {
  const [open, setOpen] = useState<FigureOut | null>(null);
  const refresh = useContext(FigureRefresh);
  useEffect(() => {
    if (!open) return;
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && setOpen(null);
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [open]);
  const shown = figures.filter((f) => f.url);
  if (!shown.length) return null;
  return (
    <div className="figures">
      {shown.map((f, i) => (
        <button key={f.key ?? i} className="figure" onClick={() => setOpen(f)} title="Click to enlarge">
          <img src={f.url} alt={f.name ?? `figure ${i + 1}`} data-testid="figure" loading="lazy" onError={() => refresh?.()} />
          <span className="figure-name">{f.name}</span>
        </button>
      ))}
      {open ? (
        <div className="lightbox" role="dialog" aria-label="Figure" onClick={() => setOpen(null)} data-testid="lightbox">
          <img src={open.url} alt={open.name ?? "figure"} />
          <div className="lightbox-bar">
            <span>{open.name}</span>
            <a href={open.url} target="_blank" rel="noreferrer" onClick={(e) => e.stopPropagation()}>
              open original
            </a>
            <button className="btn btn-ghost btn-sm" onClick={() => setOpen(null)}>
              Close
            </button>
          </div>
        </div>
      ) : null}
    </div>
  );
}
