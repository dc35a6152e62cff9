/** The typed API client (types generated from the app's OpenAPI) plus the shared request rules:
 * bearer token, a deadline on every request, 401 → sign-in, errors as {@link ApiError}. */
import createClient, { type Middleware } from "openapi-fetch";
import { getToken, signOut } from "./auth";
import { ApiError, NetworkError, errorFromResponse } from "./errors";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export const REQUEST_TIMEOUT_MS = 30_000;

const auth: Middleware = {
  onRequest({ request }) {
    const token = getToken();
    if (token) request.headers.set("Authorization", `Bearer ${token}`);
    return request;
  },
};

/** fetch with a deadline: the caller's signal or ours, whichever fires first. */
export async function fetchWithDeadline(input: RequestInfo | URL, init: RequestInit = {}, timeoutMs = REQUEST_TIMEOUT_MS): Promise<Response> {
  const deadline = AbortSignal.timeout(timeoutMs);
  const own = init.signal ?? (input instanceof Request ? input.signal : undefined);
  const signal = own ? AbortSignal.any([own, deadline]) : deadline;
  try {
    return await fetch(input, { ...init, signal });
  } catch (err) {
    if (deadline.aborted) throw new NetworkError(`The server did not answer within ${Math.round(timeoutMs / 1000)} s. Check that Corral is running and try again.`, true);
    if (own?.aborted) throw err;
    throw new NetworkError("Cannot reach the Corral server (network error). Check your connection; retrying may help.");
  }
}

export const api = createClient<paths>({
  baseUrl: "",
  fetch: (request: Request) => fetchWithDeadline(request),
});
api.use(auth);

/** Unwrap an openapi-fetch result: the data, or an ApiError (a 401 also signs out). */
export async function call<T>(promise: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
  const { data, error, response } = await promise;
  if (!response.ok) {
    const err = await errorFromResponse(response, error);
    if (err.status === 401) signOut(`${err.message} — sign in again.`);
    throw err;
  }
  return data as T;
}

/** For the few calls outside the typed client (SSE, XHR uploads): same auth header. */
export function authHeaders(extra: Record<string, string> = {}): Record<string, string> {
  const token = getToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

export { ApiError };
