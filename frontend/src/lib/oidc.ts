/** Single sign-on for a public client: OIDC authorization code + PKCE (S256), with WebCrypto.
 * The app tells us the issuer and client id at run time (`/api/auth/config`); the access token
 * the IdP returns is what the API checks (against the issuer's JWKS). */

export const CALLBACK_PATH = "/auth/callback";
const PENDING_KEY = "corral.oidc.pending";
const TIMEOUT_MS = 15_000;

export type AuthConfig = {
  mode: "dev" | "oidc";
  oidc_issuer?: string | null;
  oidc_client_id?: string | null;
  oidc_scopes: string;
};

/** What survives the round trip to the IdP (sessionStorage: this tab only, gone when closed). */
export type Pending = {
  state: string;
  nonce: string;
  verifier: string;
  tokenEndpoint: string;
  clientId: string;
  redirectUri: string;
  remember: boolean;
};

type Fetch = typeof fetch;

export class OidcError extends Error {}

export function ssoAvailable(config: AuthConfig | null): config is AuthConfig & { oidc_issuer: string; oidc_client_id: string } {
  return !!config && config.mode === "oidc" && !!config.oidc_issuer && !!config.oidc_client_id;
}

export function base64url(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** 32 random bytes, base64url: 43 characters, valid as a PKCE verifier, state or nonce. */
export function randomToken(): string {
  return base64url(crypto.getRandomValues(new Uint8Array(32)));
}

/** RFC 7636 S256: base64url(sha256(ascii(verifier))). */
export async function pkceChallenge(verifier: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

async function getJson(fetchFn: Fetch, url: string, init: RequestInit, what: string): Promise<Record<string, unknown>> {
  let response: Response;
  try {
    response = await fetchFn(url, { ...init, signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch {
    throw new OidcError(`Cannot reach the sign-in provider (${what} at ${url}): network error, timeout or CORS.`);
  }
  const body = (await response.json().catch(() => null)) as Record<string, unknown> | null;
  if (!response.ok) {
    const detail = body && typeof body.error === "string" ? `${body.error}${body.error_description ? `: ${String(body.error_description)}` : ""}` : `HTTP ${response.status}`;
    throw new OidcError(`The sign-in provider's ${what} refused the request (${detail}).`);
  }
  if (!body || typeof body !== "object") throw new OidcError(`The sign-in provider's ${what} did not answer with JSON.`);
  return body;
}

/** The issuer's discovery document; its `issuer` must be the one configured. */
export async function discover(issuer: string, fetchFn: Fetch = fetch) {
  const base = issuer.replace(/\/$/, "");
  const doc = await getJson(fetchFn, `${base}/.well-known/openid-configuration`, {}, "discovery document");
  if (typeof doc.issuer !== "string" || doc.issuer.replace(/\/$/, "") !== base) {
    throw new OidcError(`The discovery document names issuer ${String(doc.issuer)}, not the configured ${issuer}.`);
  }
  const { authorization_endpoint: authorize, token_endpoint: token } = doc;
  if (typeof authorize !== "string" || typeof token !== "string") {
    throw new OidcError("The discovery document lacks authorization_endpoint or token_endpoint.");
  }
  return { authorizationEndpoint: authorize, tokenEndpoint: token };
}

/** Remember the PKCE verifier, state and nonce; return the IdP's authorization URL to go to. */
export async function beginSignIn(
  config: AuthConfig,
  opts: { remember: boolean; origin: string; storage?: Storage; fetchFn?: Fetch },
): Promise<string> {
  if (!ssoAvailable(config)) throw new OidcError("Single sign-on is not configured on this server.");
  const storage = opts.storage ?? sessionStorage;
  const endpoints = await discover(config.oidc_issuer, opts.fetchFn);
  const pending: Pending = {
    state: randomToken(),
    nonce: randomToken(),
    verifier: randomToken(),
    tokenEndpoint: endpoints.tokenEndpoint,
    clientId: config.oidc_client_id,
    redirectUri: `${opts.origin}${CALLBACK_PATH}`,
    remember: opts.remember,
  };
  storage.setItem(PENDING_KEY, JSON.stringify(pending));
  const url = new URL(endpoints.authorizationEndpoint);
  url.search = new URLSearchParams({
    response_type: "code",
    client_id: pending.clientId,
    redirect_uri: pending.redirectUri,
    scope: config.oidc_scopes,
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: await pkceChallenge(pending.verifier),
    code_challenge_method: "S256",
  }).toString();
  return url.toString();
}

/** Check the IdP's redirect: no `error`, a code, and our state. The pending entry is used once. */
export function readCallback(search: string, storage: Storage = sessionStorage): { code: string; pending: Pending } {
  const params = new URLSearchParams(search);
  const raw = storage.getItem(PENDING_KEY);
  storage.removeItem(PENDING_KEY);
  const error = params.get("error");
  if (error) {
    const description = params.get("error_description");
    const why = error === "access_denied" ? "Sign-in was cancelled or refused at the provider" : "The sign-in provider returned an error";
    throw new OidcError(`${why} (${error}${description ? `: ${description}` : ""}).`);
  }
  const code = params.get("code");
  if (!code) throw new OidcError("The sign-in provider sent no authorization code.");
  if (!raw) throw new OidcError("No sign-in was started in this tab (or it was already completed). Start again.");
  const pending = JSON.parse(raw) as Pending;
  if (params.get("state") !== pending.state) {
    throw new OidcError("The sign-in response does not match the request (state mismatch). Start again.");
  }
  return { code, pending };
}

/** POST the code and the PKCE verifier to the token endpoint; the access token. */
export async function exchangeCode(code: string, pending: Pending, fetchFn: Fetch = fetch): Promise<string> {
  const body = await getJson(
    fetchFn,
    pending.tokenEndpoint,
    {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
      body: new URLSearchParams({
        grant_type: "authorization_code",
        code,
        redirect_uri: pending.redirectUri,
        client_id: pending.clientId,
        code_verifier: pending.verifier,
      }).toString(),
    },
    "token endpoint",
  );
  if (typeof body.access_token !== "string" || !body.access_token) {
    throw new OidcError("The token endpoint answered without an access_token.");
  }
  return body.access_token;
}

/** The whole callback: checked response → access token, and where to keep it. */
export async function completeSignIn(
  search: string,
  opts: { storage?: Storage; fetchFn?: Fetch } = {},
): Promise<{ token: string; remember: boolean }> {
  const { code, pending } = readCallback(search, opts.storage);
  return { token: await exchangeCode(code, pending, opts.fetchFn), remember: pending.remember };
}
