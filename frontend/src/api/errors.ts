/** One shape for every failed request, so pages can show what to fix (and 401/429 are handled once). */

export interface FieldError {
  /** Where the problem is, e.g. ["steps", 1, "prompt_template"] (the leading "body" dropped). */
  path: (string | number)[];
  message: string;
}

export class ApiError extends Error {
  readonly status: number;
  readonly fieldErrors: FieldError[];
  /** Seconds to wait before trying again (429 and some 503s). */
  readonly retryAfterS: number | null;
  /** The problem's stable kind, e.g. "/errors/no-model-configured" (RFC 9457 `type`). */
  readonly problemType: string | null;

  constructor(
    status: number,
    message: string,
    fieldErrors: FieldError[] = [],
    retryAfterS: number | null = null,
    problemType: string | null = null,
  ) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.fieldErrors = fieldErrors;
    this.retryAfterS = retryAfterS;
    this.problemType = problemType;
  }

  /** The kind without its prefix: "no-model-configured", "rate-limited" … */
  get kind(): string | null {
    return this.problemType ? this.problemType.replace(/^.*\/errors\//, "") : null;
  }

  get isAuth(): boolean {
    return this.status === 401;
  }
}

/** Network failures and deadlines, told apart from HTTP errors. */
export class NetworkError extends Error {
  readonly timedOut: boolean;
  constructor(message: string, timedOut = false) {
    super(message);
    this.name = "NetworkError";
    this.timedOut = timedOut;
  }
}

function pathOf(loc: unknown): (string | number)[] {
  if (!Array.isArray(loc)) return [];
  const parts = loc.filter((p): p is string | number => typeof p === "string" || typeof p === "number");
  return parts[0] === "body" || parts[0] === "query" || parts[0] === "path" ? parts.slice(1) : parts;
}

export function formatPath(path: (string | number)[]): string {
  return path.reduce<string>((acc, p) => (typeof p === "number" ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), "");
}

function fieldErrorsOf(list: unknown[]): FieldError[] {
  return list
    .filter((d): d is { loc?: unknown; msg?: unknown } => !!d && typeof d === "object")
    .map((d) => ({ path: pathOf(d.loc), message: String(d.msg ?? "invalid") }));
}

/** An RFC 9457 problem (`detail` + `errors[]`), or FastAPI's older `detail` string/list. */
export function parseDetail(body: unknown): { message: string; fieldErrors: FieldError[] } {
  if (body && typeof body === "object" && "type" in body && "status" in body) {
    const problem = body as { detail?: unknown; title?: unknown; errors?: unknown };
    const fieldErrors = Array.isArray(problem.errors) ? fieldErrorsOf(problem.errors) : [];
    const message = typeof problem.detail === "string" ? problem.detail : String(problem.title ?? "");
    return { message, fieldErrors };
  }
  const detail = body && typeof body === "object" && "detail" in body ? (body as { detail: unknown }).detail : body;
  if (typeof detail === "string") return { message: detail, fieldErrors: [] };
  if (Array.isArray(detail)) {
    const fieldErrors = detail
      .filter((d): d is { loc?: unknown; msg?: unknown } => !!d && typeof d === "object")
      .map((d) => ({ path: pathOf(d.loc), message: String(d.msg ?? "invalid") }));
    const message = fieldErrors
      .map((e) => (e.path.length ? `${formatPath(e.path)}: ${e.message}` : e.message))
      .join("; ");
    return { message: message || "invalid request", fieldErrors };
  }
  return { message: "", fieldErrors: [] };
}

export function retryAfterSeconds(headers: Headers): number | null {
  const raw = headers.get("Retry-After");
  if (!raw) return null;
  const n = Number(raw);
  if (Number.isFinite(n)) return Math.max(0, Math.ceil(n));
  const at = Date.parse(raw);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

const STATUS_TEXT: Record<number, string> = {
  400: "Bad request",
  401: "Not signed in",
  403: "Not allowed",
  404: "Not found",
  409: "Conflict",
  413: "Too large",
  422: "Invalid input",
  429: "Too many requests",
  500: "Server error",
  502: "Bad gateway",
  503: "Service unavailable",
  504: "Gateway timeout",
};

/** Build the error of a non-2xx response from its body and headers. */
export async function errorFromResponse(response: Response, body?: unknown): Promise<ApiError> {
  let parsed = body;
  if (parsed === undefined) {
    const text = await response.text().catch(() => "");
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = text;
    }
  }
  const { message, fieldErrors } = parseDetail(parsed);
  const problem = parsed && typeof parsed === "object" ? (parsed as { type?: unknown; retry_after_s?: unknown }) : {};
  const problemType = typeof problem.type === "string" ? problem.type : null;
  const retryAfter =
    typeof problem.retry_after_s === "number" ? Math.ceil(problem.retry_after_s) : retryAfterSeconds(response.headers);
  let text = message || STATUS_TEXT[response.status] || `HTTP ${response.status}`;
  if (response.status === 429) {
    text = `Rate limited: ${message || "too many requests"}.` + (retryAfter !== null ? ` Try again in ${retryAfter} s.` : "");
  } else if (response.status === 503 && retryAfter !== null) {
    text = `${text} Try again in ${retryAfter} s.`;
  }
  return new ApiError(response.status, text, fieldErrors, retryAfter, problemType);
}

export function describeError(error: unknown): string {
  if (error instanceof ApiError) return error.status >= 500 ? `${error.message} (HTTP ${error.status})` : error.message;
  if (error instanceof NetworkError) return error.message;
  if (error instanceof Error) return error.message;
  return String(error);
}
