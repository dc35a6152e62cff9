import { createContext, useCallback, useContext, useEffect, useState } from "react";
import { ApiError, describeError } from "../api/errors";

interface Toast {
  id: number;
  kind: "error" | "info" | "ok";
  message: string;
  /** Counts down (429 Retry-After). */
  until?: number;
}

interface ToastApi {
  push: (message: string, kind?: Toast["kind"], retryAfterS?: number | null) => void;
  error: (err: unknown) => void;
}

const Ctx = createContext<ToastApi>({ push: () => undefined, error: () => undefined });
let nextId = 1;

export function ToastProvider({ children }: { children: React.ReactNode }) {
  const [toasts, setToasts] = useState<Toast[]>([]);
  const [, tick] = useState(0);
  const dismiss = useCallback((id: number) => setToasts((t) => t.filter((x) => x.id !== id)), []);
  const push = useCallback(
    (message: string, kind: Toast["kind"] = "info", retryAfterS?: number | null) => {
      const id = nextId++;
      const until = retryAfterS ? Date.now() + retryAfterS * 1000 : undefined;
      setToasts((t) => [...t.slice(-3), { id, kind, message, until }]);
      setTimeout(() => dismiss(id), Math.max(kind === "error" ? 9000 : 4000, (retryAfterS ?? 0) * 1000 + 1500));
    },
    [dismiss],
  );
  const error = useCallback(
    (err: unknown) => {
      if (err instanceof ApiError && err.status === 401) return; // sign-in page says it
      if (err instanceof DOMException && err.name === "AbortError") return;
      push(describeError(err), "error", err instanceof ApiError && err.status === 429 ? err.retryAfterS : null);
    },
    [push],
  );
  useEffect(() => {
    if (!toasts.some((t) => t.until)) return;
    const timer = setInterval(() => tick((n) => n + 1), 500);
    return () => clearInterval(timer);
  }, [toasts]);
  return (
    <Ctx.Provider value={{ push, error }}>
      {children}
      <div className="toasts" aria-live="polite">
        {toasts.map((t) => (
          <div key={t.id} className={`toast toast-${t.kind}`} data-testid="toast" role={t.kind === "error" ? "alert" : "status"}>
            <span>{t.message}</span>
            {t.until && t.until > Date.now() ? <span className="toast-count">retry in {Math.ceil((t.until - Date.now()) / 1000)} s</span> : null}
            <button className="toast-x" onClick={() => dismiss(t.id)} aria-label="Dismiss">
              ×
            </button>
          </div>
        ))}
      </div>
    </Ctx.Provider>
  );
}

export const useToasts = () => useContext(Ctx);
