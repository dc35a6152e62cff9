import { beforeEach, describe, expect, it } from "vitest";
import { OidcError, base64url, beginSignIn, completeSignIn, pkceChallenge, readCallback } from "../lib/oidc";

const ISSUER = "https://idp.example";
const config = { mode: "oidc" as const, oidc_issuer: ISSUER, oidc_client_id: "corral-web", oidc_scopes: "openid profile" };

/** The IdP edge, answered here: discovery, then the token endpoint checking the PKCE pair. */
function idp(token: (form: URLSearchParams) => Response) {
  const calls: string[] = [];
  const fetchFn = (async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = String(input);
    calls.push(url);
    if (url === `${ISSUER}/.well-known/openid-configuration`) {
      return Response.json({ issuer: ISSUER, authorization_endpoint: `${ISSUER}/authorize`, token_endpoint: `${ISSUER}/token` });
    }
    if (url === `${ISSUER}/token` && init?.method === "POST") return token(new URLSearchParams(String(init.body)));
    return new Response("not found", { status: 404 });
  }) as typeof fetch;
  return { fetchFn, calls };
}

async function start(fetchFn: typeof fetch) {
  const url = new URL(await beginSignIn(config, { remember: false, origin: "http://app.test", fetchFn }));
  return url.searchParams;
}

beforeEach(() => sessionStorage.clear());

describe("PKCE", () => {
  it("challenge is base64url(sha256(verifier)) (RFC 7636 appendix B)", async () => {
    expect(await pkceChallenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")).toBe("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
  });

  it("base64url has no padding or +/", () => {
    expect(base64url(new Uint8Array([251, 255, 191]))).toBe("-_-_");
    expect(base64url(new Uint8Array([1]))).toBe("AQ");
  });
});

describe("sign-in round trip", () => {
  it("sends S256 challenge, state and nonce; exchanges the code with the matching verifier", async () => {
    let seen: URLSearchParams | null = null;
    const { fetchFn } = idp((form) => {
      seen = form;
      return Response.json({ access_token: "at-123", token_type: "Bearer" });
    });
    const params = await start(fetchFn);
    expect(params.get("response_type")).toBe("code");
    expect(params.get("code_challenge_method")).toBe("S256");
    expect(params.get("redirect_uri")).toBe("http://app.test/auth/callback");
    expect(params.get("scope")).toBe("openid profile");
    expect(params.get("state")).toHaveLength(43);
    expect(params.get("nonce")).not.toBe(params.get("state"));
    const result = await completeSignIn(`?code=abc&state=${params.get("state")}`, { fetchFn });
    expect(result).toEqual({ token: "at-123", remember: false });
    const form = seen as unknown as URLSearchParams;
    expect(form.get("grant_type")).toBe("authorization_code");
    expect(form.get("code")).toBe("abc");
    expect(form.get("client_id")).toBe("corral-web");
    expect(form.get("redirect_uri")).toBe("http://app.test/auth/callback");
    expect(await pkceChallenge(form.get("code_verifier") ?? "")).toBe(params.get("code_challenge"));
    // the pending sign-in is used once
    expect(() => readCallback(`?code=abc&state=${params.get("state")}`)).toThrow(/No sign-in was started/);
  });

  it("rejects a state mismatch without calling the token endpoint", async () => {
    const { fetchFn, calls } = idp(() => Response.json({ access_token: "never" }));
    await start(fetchFn);
    await expect(completeSignIn("?code=abc&state=forged", { fetchFn })).rejects.toThrow(/state mismatch/);
    expect(calls.some((c) => c.endsWith("/token"))).toBe(false);
  });

  it("reports the IdP's access_denied", async () => {
    const { fetchFn } = idp(() => Response.json({ access_token: "never" }));
    const params = await start(fetchFn);
    const err = await completeSignIn(`?error=access_denied&error_description=User+said+no&state=${params.get("state")}`, { fetchFn }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OidcError);
    expect((err as Error).message).toMatch(/cancelled or refused.*access_denied: User said no/);
  });

  it("reports a token endpoint failure with its error", async () => {
    const { fetchFn } = idp(() => Response.json({ error: "invalid_grant", error_description: "PKCE verification failed" }, { status: 400 }));
    const params = await start(fetchFn);
    await expect(completeSignIn(`?code=abc&state=${params.get("state")}`, { fetchFn })).rejects.toThrow(/token endpoint refused.*invalid_grant: PKCE verification failed/);
  });

  it("refuses a discovery document for another issuer", async () => {
    const fetchFn = (async () => Response.json({ issuer: "https://evil.example", authorization_endpoint: "x", token_endpoint: "y" })) as typeof fetch;
    await expect(beginSignIn(config, { remember: true, origin: "http://app.test", fetchFn })).rejects.toThrow(/not the configured/);
  });

  it("refuses when SSO is not configured", async () => {
    await expect(beginSignIn({ mode: "dev", oidc_scopes: "openid" }, { remember: true, origin: "http://app.test" })).rejects.toThrow(/not configured/);
  });
});
