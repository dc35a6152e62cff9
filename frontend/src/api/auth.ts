/** Where the token lives, and who hears about a 401. Kept outside React so fetch code can use it. */

const KEY = "corral.token";
type Listener = (reason: string | null) => void;
const listeners = new Set<Listener>();

export function getToken(): string | null {
  return sessionStorage.getItem(KEY) ?? localStorage.getItem(KEY);
}

export function setToken(token: string, remember: boolean): void {
  clearToken();
  (remember ? localStorage : sessionStorage).setItem(KEY, token.trim());
  listeners.forEach((l) => l(null));
}

export function clearToken(): void {
  localStorage.removeItem(KEY);
  sessionStorage.removeItem(KEY);
}

/** Forget the token and tell the app to show sign-in with `reason`. */
export function signOut(reason: string | null): void {
  clearToken();
  listeners.forEach((l) => l(reason));
}

export function onAuthChange(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}
