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

test('signing out ends the session', async () => {
  await Promise.all([page.waitForURL(`${base}/console/login`), page.click('#sign-out')]);
  await page.goto(`${base}/console/audit`);
  assert.equal(new URL(page.url()).pathname, '/console/login');
});
