// End-to-end: the Operations page (admins) in Debian's Chromium (playwright-core).
//   CORRAL_E2E_URL=... CORRAL_E2E_TOKEN=<admin> CORRAL_E2E_USER_TOKEN=<not admin> node e2e/ops.mjs
// Checks: queues with depth and workers, workers healthy, a failure sent while the page is open
// shows up without a reload with its trace id (copyable), the tasks page shows the same trace
// id; a non-admin sees no Operations link and a "for admins" notice. Ends "N passed, M failed".
import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.CORRAL_E2E_URL ?? "").replace(/\/$/, "");
const ADMIN = process.env.CORRAL_E2E_TOKEN ?? "";
const USER = process.env.CORRAL_E2E_USER_TOKEN ?? "";
const OUT = resolve(process.env.CORRAL_E2E_OUT ?? join(here, "..", "..", "test-output", "screenshots"));
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
if (!BASE || !ADMIN || !USER) {
  console.error("set CORRAL_E2E_URL, CORRAL_E2E_TOKEN and CORRAL_E2E_USER_TOKEN");
  process.exit(2);
}
mkdirSync(OUT, { recursive: true });

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  timeout: 60_000,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
});
let passed = 0;
let failed = 0;

async function signedIn(token) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE });
  context.setDefaultTimeout(20_000);
  await context.addInitScript((t) => localStorage.setItem("corral.token", t), token);
  const page = await context.newPage();
  return { context, page };
}

async function scenario(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok    ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL  ${name}: ${err?.stack ?? err}`);
  }
}

function expect(cond, message) {
  if (!cond) throw new Error(message);
}

async function invokeFail(token, message) {
  const response = await fetch(`${BASE}/api/tools/fail/invoke`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: JSON.stringify({ arguments: { message } }),
  });
  const body = await response.json();
  expect(body.status === "error", `fail tool: ${JSON.stringify(body)}`);
  return body.task_id;
}

await scenario("ops-admin-live", async () => {
  const { context, page } = await signedIn(ADMIN);
  await page.goto(`${BASE}/#/chat`);
  await page.getByTestId("nav-operations").click();
  await page.getByTestId("ops-queues").waitFor();
  for (const queue of ["python_q", "circuit_q", "llm_q"]) {
    const row = page.locator(`[data-testid=ops-queues] tr[data-queue="${queue}"]`);
    await row.waitFor();
    expect(/^\d+$/.test((await row.getByTestId("queue-depth").innerText()).trim()), `${queue} depth is a number`);
    await page.waitForFunction(
      (q) => Number(document.querySelector(`[data-testid=ops-queues] tr[data-queue="${q}"] [data-testid=queue-workers]`)?.textContent) >= 1,
      queue,
    );
  }
  const health = await page.locator("[data-testid=ops-workers] [data-testid=worker-health]").allInnerTexts();
  expect(health.length >= 3 && health.every((h) => h === "healthy"), `workers healthy: ${health}`);
  // A failure while the page is open appears without a reload, with its trace id.
  const taskId = await invokeFail(ADMIN, `ops e2e ${Date.now()}`);
  const row = page.locator(`[data-testid=ops-failures] tr[data-task-id="${taskId}"]`);
  await row.waitFor({ timeout: 15_000 });
  const trace = await row.getByTestId("trace-id").getAttribute("data-trace-id");
  expect(/^[0-9a-f]{32}$/.test(trace ?? ""), `trace id: ${trace}`);
  await row.getByTestId("trace-id").click();
  expect((await page.evaluate(() => navigator.clipboard.readText())) === trace, "trace id copied");
  await page.locator("[data-testid=ops-tasks] tr[data-task=\"system.fail\"]").waitFor();
  await page.screenshot({ path: join(OUT, "30-operations.png") });
  // The tasks page shows the same trace id for the task.
  await page.goto(`${BASE}/#/tasks/${taskId}`);
  const shown = page.getByTestId("trace-id").first();
  await shown.waitFor();
  expect((await shown.getAttribute("data-trace-id")) === trace, "tasks page shows the trace id");
  await context.close();
});

await scenario("ops-not-for-users", async () => {
  const { context, page } = await signedIn(USER);
  await page.goto(`${BASE}/#/chat`);
  await page.getByTestId("nav-tasks").waitFor();
  expect((await page.getByTestId("nav-operations").count()) === 0, "no Operations link for a user");
  await page.goto(`${BASE}/#/ops`);
  await page.getByTestId("ops-forbidden").waitFor();
  await context.close();
});

await browser.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
