// The console in headless Chromium: sign-in, navigation, audit filters, sign-out.
// Started by crates/cli/tests/browser.rs with SWITCHBOARD_URL and SWITCHBOARD_TOKEN set.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import path from 'node:path';

const base = process.env.SWITCHBOARD_URL;
const token = process.env.SWITCHBOARD_TOKEN;
const shots = process.env.SCREENSHOT_DIR;
let browser;
let page;

before(async () => {
  assert.ok(base && token, 'SWITCHBOARD_URL and SWITCHBOARD_TOKEN must be set');
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(30_000);
});

after(async () => { await browser?.close(); });

async function shot(name) {
  if (shots) await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

async function actions() {
  return page.locator('#audit-table tr.audit-row td.action').allTextContents();
}

test('an anonymous visit to the console is sent to the sign-in page', async () => {
  await page.goto(`${base}/console`);
  assert.equal(new URL(page.url()).pathname, '/console/login');
  assert.equal(await page.locator('#token-form input[name="token"]').count(), 1);
  assert.equal(await page.locator('#password-form input[name="username"]').count(), 1);
  assert.equal(await page.locator('#password-form input[name="password"]').count(), 1);
});

test('a wrong token is refused with a visible error', async () => {
  const response = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/console/login') && r.request().method() === 'POST'),
    (async () => {
      await page.fill('#token-form input[name="token"]', 'sbt_wrong-token-for-the-browser-test');
      await page.click('#token-form button[type="submit"]');
    })(),
  ]).then(([r]) => r);
  assert.equal(response.status(), 401);
  const error = await page.locator('.error').textContent();
  assert.match(error, /Sign-in failed/);
});

test('the admin token signs in and shows the navigation and who is signed in', async () => {
  await page.goto(`${base}/console/login`);
  await page.fill('#token-form input[name="token"]', token);
  await Promise.all([page.waitForURL(`${base}/console`), page.click('#token-form button[type="submit"]')]);
  assert.match(await page.locator('#whoami').textContent(), /admin/);
  const link = page.locator('nav a[href="/console/audit"]');
  assert.equal((await link.textContent()).trim(), 'Audit log');
  await shot('overview');
});

test('the audit page lists the sign-in and filters by action prefix', async () => {
  await page.click('nav a[href="/console/audit"]');
  await page.waitForURL(/\/console\/audit/);
  assert.equal((await page.locator('h1').textContent()).trim(), 'Audit log');
  const all = await actions();
  assert.ok(all.includes('session.signed_in'), `rows: ${all.join(', ')}`);

  await page.fill('#audit-filter input[name="action"]', 'session.');
  await Promise.all([page.waitForURL(/action=session\./), page.click('#audit-filter button[type="submit"]')]);
  const filtered = await actions();
  assert.ok(filtered.length > 0);
  assert.ok(filtered.every((a) => a.startsWith('session.')), `rows: ${filtered.join(', ')}`);
  await shot('audit');

  await page.fill('#audit-filter input[name="action"]', 'no.such.action');
  await Promise.all([page.waitForURL(/action=no\.such\.action/), page.click('#audit-filter button[type="submit"]')]);
  assert.equal((await actions()).length, 0);
  assert.equal(await page.locator('.empty').count(), 1);
});

test('an admin adds an Epic environment and runs the connection doctor from the console', async () => {
  await page.click('nav a[href="/console/epic"]');
  await page.waitForURL(/\/console\/epic/);
  assert.equal((await page.locator('h1').textContent()).trim(), 'Epic environments');
  await page.fill('#new-environment input[name="name"]', 'Browser test TST');
  await page.selectOption('#new-environment select[name="kind"]', 'non_production');
  await page.fill('#new-environment input[name="interconnect_url"]', 'http://127.0.0.1:9');
  await page.fill('#new-environment input[name="instance"]', 'interconnect-tst');
  await page.fill('#new-environment input[name="client_id"]', 'browser-client');
  await page.check('#new-environment input[name="app_rover"]');
  await Promise.all([page.waitForLoadState('load'), page.click('#new-environment button[type="submit"]')]);
  assert.match(await page.locator('.notice').textContent(), /created/);
  const card = page.locator('.card.env', { hasText: 'Browser test TST' });
  assert.equal((await card.locator('.badge.kind-non_production').textContent()).trim(), 'NON-PRODUCTION');
  assert.match((await card.locator('.jwk-url').textContent()).trim(), /\/jwks\/ks_[0-9a-f]+\.json$/);
  await Promise.all([page.waitForLoadState('load'), card.locator('button.test-connection').click()]);
  assert.match(await page.locator('.error').textContent(), /problems/);
  const failed = await page.locator('.card.env', { hasText: 'Browser test TST' }).locator('tr.step-fail td.mono').allTextContents();
  assert.ok(failed.includes('tcp'), `failed steps: ${failed.join(', ')}`);
  const logout = page.locator('.card.env', { hasText: 'Browser test TST' }).locator('form.logout-test');
  await logout.locator('input[name="serial"]').fill('J4X7X22WGA');
  await Promise.all([page.waitForLoadState('load'), logout.locator('button[type="submit"]').click()]);
  assert.match(await page.locator('.error').textContent(), /Logout test failed/);
  await shot('epic');
});

test('an admin adds a telehealth profile, a provider joins from Epic, and an operator ends the visit', async () => {
  const sim = process.env.SIM_URL;
  assert.ok(sim, 'SIM_URL must be set');
  // An environment on the simulator.
  await page.goto(`${base}/console/epic`);
  await page.fill('#new-environment input[name="name"]', 'Sim TST');
  await page.selectOption('#new-environment select[name="kind"]', 'non_production');
  await page.fill('#new-environment input[name="interconnect_url"]', sim);
  await page.fill('#new-environment input[name="instance"]', 'interconnect-tst');
  await page.fill('#new-environment input[name="client_id"]', 'browser-backend');
  await Promise.all([page.waitForLoadState('load'), page.click('#new-environment button[type="submit"]')]);
  // The profile.
  await page.click('nav a[href="/console/telehealth"]');
  await page.waitForURL(/\/console\/telehealth$/);
  assert.equal((await page.locator('h1').textContent()).trim(), 'Telehealth profiles');
  await page.fill('#new-profile input[name="name"]', 'Browser Clinic');
  const envValue = await page.locator('#new-profile select[name="environment_id"] option', { hasText: 'Sim TST' }).getAttribute('value');
  await page.selectOption('#new-profile select[name="environment_id"]', envValue);
  await page.fill('#new-profile input[name="key"]', 'fTW2KwlJZ6JEpRS+RlN2fruKPgggBe+Y9txLIk3QpA0=');
  await page.fill('#new-profile input[name="provider_client_id"]', 'browser-provider');
  await page.fill('#new-profile input[name="provider_client_secret"]', 'browser-provider-secret');
  await page.fill('#new-profile input[name="patient_client_id"]', 'browser-patient');
  await page.fill('#new-profile input[name="patient_client_secret"]', 'browser-patient-secret');
  await Promise.all([page.waitForLoadState('load'), page.click('#new-profile button[type="submit"]')]);
  assert.match(await page.locator('.notice').textContent(), /created/);
  const card = page.locator('.card.profile', { hasText: 'Browser Clinic' });
  const launchUrl = (await card.locator('.launch-url').textContent()).trim();
  assert.match(launchUrl, /\/telehealth\/v1\/provider\/launch\/[0-9a-f-]{36}$/);
  assert.ok(!(await page.content()).includes('browser-provider-secret'), 'secrets never reach the page');
  await shot('telehealth-profiles');
  // Epic's side: the app registration and the video-visit button.
  const redirect = launchUrl.replace('/launch/', '/oauth2authorized/');
  let r = await fetch(`${sim}/_sim/clients`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_id: 'browser-provider', client_secret: 'browser-provider-secret', redirect_uris: [redirect], apis: ['*'] }) });
  assert.ok(r.ok);
  r = await fetch(`${sim}/_sim/telehealth/launch`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ launch_url: launchUrl, instance: 'interconnect-tst', key: 'fTW2KwlJZ6JEpRS+RlN2fruKPgggBe+Y9txLIk3QpA0=', role: 'provider' }) });
  assert.equal(r.status, 201);
  const link = await r.json();
  // The provider's browser follows Switchboard → Epic sign-in → Switchboard → the visit.
  const provider = await (await browser.newContext()).newPage();
  await provider.goto(link.url);
  await provider.waitForURL(/\/telehealth\/v1\/room\//);
  const name = (await provider.locator('#conference-name').textContent()).trim();
  assert.match(name, /^Appointment for .+ Browser Clinic:.+/);
  assert.equal(await provider.locator('#in-call').count(), 1);
  assert.equal(await provider.locator('#participants tr.participant').count(), 1);
  await provider.screenshot({ path: path.join(shots || '/tmp', 'telehealth-room.png'), fullPage: true });
  // Opening the same link again is refused with a named page.
  const again = await (await browser.newContext()).newPage();
  const resp = await again.goto(link.url);
  assert.equal(resp.status(), 409);
  assert.match(await again.locator('h1').textContent(), /already used/);
  // The status pages.
  await page.click('#active-conferences');
  await page.waitForURL(/state=active/);
  const rows = page.locator('#conferences tr.conference');
  assert.equal(await rows.count(), 1);
  assert.equal((await rows.first().locator('a').textContent()).trim(), name);
  await shot('telehealth-active');
  await Promise.all([page.waitForURL(/\/console\/telehealth\/conferences\/[0-9a-f-]{36}$/), rows.first().locator('a').click()]);
  assert.equal((await page.locator('#conference-name').textContent()).trim(), name);
  await Promise.all([page.waitForLoadState('load'), page.click('#end-conference')]);
  assert.equal((await page.locator('#conference-state').textContent()).trim(), 'ended');
  // The provider's page shows the end.
  await provider.reload();
  assert.equal(await provider.locator('#ended').count(), 1);
  await page.goto(`${base}/console/telehealth/conferences?state=ended`);
  assert.equal(await page.locator('#conferences tr.conference').count(), 1);
  await page.fill('#conference-search input[name="q"]', 'no-such-visit');
  await Promise.all([page.waitForURL(/q=no-such-visit/), page.click('#conference-search button[type="submit"]')]);
  assert.equal(await page.locator('#conferences tr.conference').count(), 0);
  await shot('telehealth-historic');
});

test('an admin creates a gateway app and sees its client secret once', async () => {
  await page.click('nav a[href="/console/gateway"]');
  await page.waitForURL(/\/console\/gateway$/);
  assert.equal((await page.locator('h1').textContent()).trim(), 'FHIR gateway');
  await page.fill('#new-app input[name="name"]', 'Browser app');
  await page.fill('#new-app input[name="scopes"]', 'patient/Patient.read');
  await Promise.all([page.waitForLoadState('load'), page.click('#new-app button[type="submit"]')]);
  assert.match(await page.locator('.error').textContent(), /system/);
  await page.fill('#new-app input[name="name"]', 'Browser app');
  await page.fill('#new-app input[name="scopes"]', 'system/Patient.read system/Slot.rs');
  await Promise.all([page.waitForLoadState('load'), page.click('#new-app button[type="submit"]')]);
  const secret = (await page.locator('#new-secret .client-secret').textContent()).trim();
  assert.match(secret, /^sbs_/);
  const clientId = (await page.locator('#new-secret .client-id').textContent()).trim();
  const row = page.locator('#apps tr.app', { hasText: 'Browser app' });
  assert.match(await row.textContent(), /OAuth2 Client Credentials/);
  // The secret works at the token endpoint, and is never shown again.
  const r = await fetch(`${base}/auth/token?grant_type=client_credentials`, { method: 'POST',
    headers: { Authorization: 'Basic ' + Buffer.from(`${clientId}:${secret}`).toString('base64') } });
  assert.equal(r.status, 200);
  await page.goto(`${base}/console/gateway`);
  assert.equal(await page.locator('#new-secret').count(), 0);
  assert.ok(!(await page.content()).includes(secret));
  await shot('gateway');
});

test('signing out ends the session', async () => {
  await Promise.all([page.waitForURL(`${base}/console/login`), page.click('#sign-out')]);
  await page.goto(`${base}/console/audit`);
  assert.equal(new URL(page.url()).pathname, '/console/login');
});
