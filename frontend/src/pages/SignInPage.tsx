import { useEffect, useState } from "react";
import { setToken } from "../api/auth";
import { NetworkError, describeError, errorFromResponse } from "../api/errors";
import { fetchWithDeadline } from "../api/client";
import { type AuthConfig, beginSignIn, ssoAvailable } from "../lib/oidc";

/** Paste the dev token `make up` prints (or an OIDC access token, or an API key `ck_…`).
 * It is checked against /api/me before it is kept. Or single sign-on, when the app has it. */
export function SignInPage({ reason }: { reason: string | null }) {
  const [token, setValue] = useState("");
  const [remember, setRemember] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [config, setConfig] = useState<AuthConfig | null>(null);
  const [ssoBusy, setSsoBusy] = useState(false);

  useEffect(() => {
    let live = true;
    fetchWithDeadline("/api/auth/config", {}, 15_000)
      .then((r) => (r.ok ? (r.json() as Promise<AuthConfig>) : null))
      .then((c) => live && setConfig(c))
      .catch(() => undefined); // the paste form still works; the button stays off
    return () => {
      live = false;
    };
  }, []);
  const sso = ssoAvailable(config) ? config : null;

  async function singleSignOn() {
    if (!sso) return;
    setSsoBusy(true);
    setError(null);
    try {
      window.location.assign(await beginSignIn(sso, { remember, origin: window.location.origin }));
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
      setSsoBusy(false);
    }
  }

  async function submit(e: React.FormEvent) {
    e.preventDefault();
    const value = token.trim().replace(/^Bearer\s+/i, "");
    if (!value) {
      setError("Paste a token first.");
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const response = await fetchWithDeadline("/api/me", { headers: { Authorization: `Bearer ${value}` } }, 15_000);
      if (!response.ok) {
        const err = await errorFromResponse(response);
        setError(response.status === 401 ? `That token was refused: ${err.message}` : describeError(err));
        return;
      }
      setToken(value, remember);
    } catch (err) {
      setError(err instanceof NetworkError ? err.message : describeError(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="signin">
      <div className="signin-card">
        <div className="brand brand-lg">
          <img src="/favicon.svg" alt="" width={40} height={40} />
          <span>Corral</span>
        </div>
        <p className="muted">Heavy agent tools on workers, watched live.</p>
        {reason ? (
          <div className="callout callout-warn" data-testid="signin-reason">
            {reason}
          </div>
        ) : null}
        <form onSubmit={submit}>
          <label className="field">
            <span>Access token</span>
            <textarea
              data-testid="token-input"
              rows={4}
              value={token}
              onChange={(e) => setValue(e.target.value)}
              placeholder="Paste the dev token printed by `make up` (or an API key ck_…)"
              spellCheck={false}
              autoFocus
            />
          </label>
          <label className="check">
            <input type="checkbox" checked={remember} onChange={(e) => setRemember(e.target.checked)} /> Remember on this device
          </label>
          {error ? (
            <div className="callout callout-bad" data-testid="signin-error">
              {error}
            </div>
          ) : null}
          <button className="btn btn-primary btn-block" type="submit" disabled={busy} data-testid="signin-submit">
            {busy ? "Checking…" : "Sign in"}
          </button>
        </form>
        <div className="divider">
          <span>or</span>
        </div>
        <button
          className="btn btn-block"
          type="button"
          data-testid="signin-sso"
          disabled={!sso || ssoBusy}
          onClick={singleSignOn}
          title={sso ? `Issuer: ${sso.oidc_issuer}` : "Not configured"}
        >
          {ssoBusy ? "Redirecting…" : "Sign in with single sign-on (OIDC)"}
        </button>
        <p className="muted small">
          {sso ? (
            <>
              Signs you in at <code>{sso.oidc_issuer}</code> and brings you back here.
            </>
          ) : (
            <>
              Single sign-on is not configured. To turn it on, run the app with <code>CORRAL_AUTH__MODE=oidc</code>,{" "}
              <code>CORRAL_AUTH__OIDC_ISSUER</code>, <code>_OIDC_AUDIENCE</code>, <code>_OIDC_JWKS_URL</code> and{" "}
              <code>_OIDC_CLIENT_ID</code> (a public client with redirect URI <code>{window.location.origin}/auth/callback</code>).
            </>
          )}
        </p>
      </div>
    </div>
  );
}
