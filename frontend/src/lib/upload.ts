/** Uploads with XMLHttpRequest, the one browser API that reports upload progress. */
import { getToken, signOut } from "../api/auth";
import { ApiError, NetworkError, parseDetail } from "../api/errors";

export interface UploadOptions {
  url: string;
  form: FormData;
  onProgress: (loaded: number, total: number) => void;
  signal?: AbortSignal;
  timeoutMs?: number;
}

export function uploadWithProgress<T>({ url, form, onProgress, signal, timeoutMs = 15 * 60_000 }: UploadOptions): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    const token = getToken();
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.timeout = timeoutMs;
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : 0);
    xhr.onload = () => {
      let body: unknown = undefined;
      try {
        body = xhr.responseText ? JSON.parse(xhr.responseText) : undefined;
      } catch {
        body = xhr.responseText;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body as T);
        return;
      }
      const { message } = parseDetail(body);
      const retry = Number(xhr.getResponseHeader("Retry-After"));
      const err = new ApiError(
        xhr.status,
        xhr.status === 429
          ? `Rate limited: ${message || "too many requests"}.${Number.isFinite(retry) && retry > 0 ? ` Try again in ${retry} s.` : ""}`
          : message || `upload failed (HTTP ${xhr.status})`,
        [],
        Number.isFinite(retry) && retry > 0 ? retry : null,
      );
      if (xhr.status === 401) signOut(`${err.message} — sign in again.`);
      reject(err);
    };
    xhr.onerror = () => reject(new NetworkError("The upload failed: the connection to the server broke."));
    xhr.ontimeout = () => reject(new NetworkError(`The upload did not finish within ${Math.round(timeoutMs / 60000)} min.`, true));
    xhr.onabort = () => reject(new DOMException("upload cancelled", "AbortError"));
    signal?.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(form);
  });
}
