// The web dashboard end to end, in headless Chromium, against a running `kappa up`.
//
// Started by the Rust system test `ui::dashboard_in_headless_chromium`, which starts the
// platform, deploys the function and passes:
//   KAPPA_API_URL, KAPPA_ROUTER_URL, KAPPA_TOKEN, KAPPA_FUNCTION, KAPPA_ROUTE, CHROMIUM,
//   and optionally KAPPA_SCREENSHOTS (a directory: the main pages at laptop and phone widths).
// Every wait is for a condition on the page, with a generous deadline; nothing sleeps.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const api = env("KAPPA_API_URL");
const router = env("KAPPA_ROUTER_URL");
const token = env("KAPPA_TOKEN");
const fn = env("KAPPA_FUNCTION");
const route = env("KAPPA_ROUTE");
const shots = process.env.KAPPA_SCREENSHOTS;
const WAIT = 60_000;

function step(what) {
  console.log(`-- ${what}`);
}

async function call(query = "") {
  const r = await fetch(`${router}${route}${query}`);
  await r.text();
  return r;
}

async function shoot(page, name) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  for (const [suffix, width, height] of [["laptop", 1280, 800], ["phone", 390, 844]]) {
    await page.setViewportSize({ width, height });
    // Let the layout settle at the new width (an element of the page, not a timer).
    await page.locator("main").waitFor();
    await page.screenshot({ path: join(shots, `${name}-${suffix}.png`), fullPage: suffix === "phone" ? false : true });
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

const profile = mkdtempSync(join(tmpdir(), "kappa-ui-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: env("CHROMIUM"),
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1280, height: 800 },
});
let failed = false;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(WAIT);
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  step("the API's / leads to the sign-in page");
  await page.goto(`${api}/`);
  assert.match(page.url(), /\/ui\/$/);
  await page.getByTestId("signin").waitFor();
  await shoot(page, "signin");

  step("a wrong token is refused");
  await page.getByTestId("token").fill("not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("signin-error").filter({ hasText: "refused" }).waitFor();

  step("signing in shows the functions");
  await page.getByTestId("token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  const row = page.locator(`[data-testid=function-row][data-function="${fn}"]`);
  await row.waitFor();

  step("invocations appear after requests are sent");
  const ids = [];
  for (let i = 0; i < 5; i++) {
    const r = await call();
    assert.equal(r.status, 200);
    ids.push(r.headers.get("x-kappa-invocation-id"));
  }
  assert.ok(ids.every((id) => /^[0-9a-f]{32}$/.test(id)), `invocation ids: ${ids}`);
  await page.waitForFunction(
    (name) => {
      const cell = document.querySelector(`[data-function="${name}"] [data-testid=requests]`);
      return cell && Number(cell.textContent) >= 5;
    },
    fn,
    { timeout: WAIT },
  );
  await shoot(page, "functions");

  step("the function's page lists its invocations with their ids");
  await row.getByRole("link", { name: fn }).click();
  await page.getByTestId("invocations").waitFor();
  for (const id of ids) await page.getByTestId("invocations").getByText(id).waitFor();
  await page.getByTestId("config").getByText("python").first().waitFor();
  await page.getByTestId("instances").waitFor();

  step("the function's page lists its versions");
  const expectVersions = Number(process.env.KAPPA_EXPECT_VERSIONS || "1");
  await page.locator("[data-testid=version]").nth(expectVersions - 1).waitFor();
  assert.equal(await page.locator("[data-testid=version]").count(), expectVersions);
  const newest = page.locator(`[data-testid=version][data-version="${expectVersions}"]`);
  await newest.getByText("current").waitFor();
  assert.match(await newest.locator("td").nth(2).textContent(), /^[0-9a-f]{12}$/, "the code's checksum");
  if (process.env.KAPPA_EXPECT_PIN) {
    const [version, pin] = process.env.KAPPA_EXPECT_PIN.split(":");
    const pinned = page.locator(`[data-testid=version][data-version="${version}"]`);
    await pinned.getByTestId("version-pins").filter({ hasText: `route ${pin}` }).waitFor();
    // The pinned route is one of the function's triggers too.
    await page.getByTestId("triggers").getByText(pin, { exact: true }).waitFor();
    assert.equal(await pinned.getByText("current").count(), 0);
  }
  if (process.env.KAPPA_EXPECT_CHANGE) {
    await newest.getByText(process.env.KAPPA_EXPECT_CHANGE).waitFor();
  }

  step("a log line arrives live");
  await page.getByTestId("logs-state").filter({ hasText: "live" }).waitFor();
  const marker = `marker-${Date.now().toString(36)}`;
  assert.equal((await call(`?say=${marker}`)).status, 200);
  await page.getByTestId("logs").getByText(`dashboard says ${marker}`).waitFor();

  step("failing requests show an error rate");
  for (let i = 0; i < 3; i++) assert.equal((await call("?fail=1")).status, 500);
  await page.waitForFunction(
    () => {
      const v = document.querySelector("[data-testid=stat-error-rate]");
      return v && v.textContent !== "0%";
    },
    null,
    { timeout: WAIT },
  );
  const rate = await page.getByTestId("stat-error-rate").textContent();
  // 3 failures out of 9 requests.
  assert.equal(rate, "33%");
  await page.getByTestId("invocations").getByText("500").first().waitFor();
  await shoot(page, "function");

  step("the functions list shows the error rate too");
  await page.getByRole("link", { name: "Functions" }).first().click();
  await page.locator(`[data-function="${fn}"] [data-testid=error-rate]`).filter({ hasText: "33%" }).waitFor();

  step("environments with their pools");
  await page.getByRole("link", { name: "Environments" }).click();
  await page.locator("[data-testid=environment][data-environment=python]").waitFor();
  await page.getByTestId("pool-warm").first().waitFor();
  await shoot(page, "environments");

  step("triggers with their last outcomes");
  await page.getByRole("link", { name: "Triggers" }).click();
  await page.getByTestId("http-triggers").getByText(fn).first().waitFor();
  if (process.env.KAPPA_EXPECT_MQ) {
    await page.getByTestId("mq-trigger").filter({ hasText: process.env.KAPPA_EXPECT_MQ }).getByText("ready").waitFor();
  }
  if (process.env.KAPPA_EXPECT_TIMER) {
    await page.getByTestId("time-trigger").filter({ hasText: process.env.KAPPA_EXPECT_TIMER }).waitFor();
  }
  await shoot(page, "triggers");

  step("signing out forgets the token");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByTestId("signin").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);

  assert.deepEqual(consoleErrors.filter((e) => !e.includes("401")), [], "no script errors");
  console.log("dashboard test passed");
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
