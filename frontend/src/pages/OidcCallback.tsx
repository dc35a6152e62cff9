import { useEffect, useState } from "react";
import { setToken } from "../api/auth";
import { completeSignIn } from "../lib/oidc";

// One exchange per page load: React's StrictMode runs effects twice, a code works only once.
let inflight: Promise<{ token: string; remember: boolean }> | null = null;

/** `/auth/callback`: the IdP sent the browser back; trade the code for a token, then go home. */
export function OidcCallback({ onDone }: { onDone: () => void }) {
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    inflight ??= completeSignIn(window.location.search);
    inflight.then(
      ({ token, remember }) => {
        if (!live) return;
        window.history.replaceState(null, "", "/#/chat");
        setToken(token, remember);
        onDone();
      },
      (err: unknown) => live && setError(err instanceof Error ? err.message : String(err)),
    );
    return () => {
      live = false;
    };
  }, [onDone]);
  return (
    <div className="signin">
      <div className="signin-card">
        <div className="brand brand-lg">
          <img src="/favicon.svg" alt="" width={40} height={40} />
          <span>Corral</span>
        </div>
        {error ? (
          <>
            <div className="callout callout-bad" data-testid="oidc-error">
              {error}
            </div>
            <a className="btn btn-block" href="/" data-testid="oidc-restart">
              Back to sign-in
            </a>
          </>
        ) : (
          <p className="muted" data-testid="oidc-pending">
            Finishing single sign-on…
          </p>
        )}
      </div>
    </div>
  );
}
