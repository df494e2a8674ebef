// Shared devices in headless Chromium: the console's groups, locations, enrolment tokens and
// directory pages, the device list, dashboard and device page, and the kiosk beside the dock.
// Started by crates/cli/tests/browser.rs with SWITCHBOARD_URL and SWITCHBOARD_TOKEN set.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import path from 'node:path';

const base = process.env.SWITCHBOARD_URL;
const token = process.env.SWITCHBOARD_TOKEN;
const shots = process.env.SCREENSHOT_DIR;
const LOCATION = 'ward-4w';
const BADGE = '0012345';
let browser;
let page;
let kioskLink;
let enrolmentSecret;

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

async function shot(name, p = page) {
  if (shots) await p.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

/// Runs `act` (a click or a key press that submits a form) and waits for the new page to load;
/// answers the response of the navigation.
async function submit(act, p = page) {
  const response = p.waitForResponse((r) => r.request().isNavigationRequest() && r.request().frame() === p.mainFrame());
  const committed = p.waitForEvent('framenavigated', (f) => f === p.mainFrame());
  await act();
  const [r] = await Promise.all([response, committed]);
  await p.waitForLoadState('load');
  return r;
}

async function text(selector, p = page) {
  return (await p.locator(selector).first().textContent()).trim();
}

async function enrol(serial, name, slot, battery) {
  let r = await fetch(`${base}/agent/v1/enrol`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${enrolmentSecret}` },
    body: JSON.stringify({ serial, platform: 'ios', name, slot, model: 'iPhone 15',
      appconfig: { Rover: { EpicMobileDeviceID: serial, EpicMobileDeviceIDAppName: 'true' } } }),
  });
  assert.equal(r.status, 201, await r.clone().text());
  const { credential } = await r.json();
  r = await fetch(`${base}/agent/v1/heartbeat`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${credential}` },
    body: JSON.stringify({ battery, docked: true }),
  });
  assert.equal(r.status, 200, await r.clone().text());
}

test('an admin signs in and finds the Devices pages in the navigation', async () => {
  await page.goto(`${base}/console/login`);
  await page.fill('#token-form input[name="token"]', token);
  await Promise.all([page.waitForURL(`${base}/console`), page.click('#token-form button[type="submit"]')]);
  await Promise.all([page.waitForURL(`${base}/console/devices`), page.click('nav a[href="/console/devices"]')]);
  assert.equal(await text('h1'), 'Shared devices');
  assert.equal(await page.locator('header nav a.current').textContent(), 'Devices');
  assert.equal(await page.locator('#devices tr.device').count(), 0);
  assert.equal(await page.locator('.empty').count(), 1);
});

test('an admin creates a location and sees its kiosk link once', async () => {
  await submit(() => page.click('#subnav-groups'));
  assert.match(await text('h1'), /Device groups/);
  await page.fill('#new-location input[name="id"]', 'Not A Slug');
  await page.fill('#new-location input[name="name"]', '4 West');
  const bad = await submit(() => page.click('#new-location button[type="submit"]'));
  assert.equal(bad.status(), 422);
  assert.match(await text('#locations-card li.field-error[data-field="id"]'), /lower-case/);
  await page.fill('#new-location input[name="id"]', LOCATION);
  await page.fill('#new-location input[name="name"]', '4 West');
  await submit(() => page.click('#new-location button[type="submit"]'));
  assert.match(await text('.notice'), /kiosk/);
  kioskLink = await text('#new-kiosk .kiosk-link');
  assert.match(kioskLink, new RegExp(`/kiosk/${LOCATION}\\?key=sbk_`));
  assert.equal(await page.locator(`#locations tr.location[data-location="${LOCATION}"]`).count(), 1);
  await page.goto(`${base}/console/devices/groups`);
  assert.equal(await page.locator('#new-kiosk').count(), 0);
  assert.ok(!(await page.content()).includes(kioskLink.split('key=')[1]), 'the kiosk key is shown once');
});

test('the group editor shows the field errors of a wrong workflow, then creates the group', async () => {
  await page.fill('#group-form input[name="name"]', 'Browser iPhones');
  await page.fill('#group-form input[name="lending_minutes"]', '720');
  await page.fill('#group-form textarea[name="ios"]', '[{"action":"clear_data","app_id":"com.epic.rover"}]');
  await page.fill('#group-form textarea[name="android"]', '[]');
  const bad = await submit(() => page.click('#group-form button[type="submit"]'));
  assert.equal(bad.status(), 422);
  const err = page.locator('#group-editor li.field-error[data-field="workflows.ios[0]"]');
  assert.match(await err.textContent(), /Android action/);
  // What was typed is kept.
  assert.equal(await page.inputValue('#group-form input[name="name"]'), 'Browser iPhones');
  assert.match(await page.inputValue('#group-form textarea[name="ios"]'), /clear_data/);
  // Not JSON steps at all.
  await page.fill('#group-form textarea[name="ios"]', '[{"action":"dance"}]');
  await submit(() => page.click('#group-form button[type="submit"]'));
  assert.match(await text('#group-editor li.field-error[data-field="workflows.ios"]'), /unknown variant/);
  await shot('devices-group-errors');
  // A valid one: a lock that need not finish before the device is handed out again.
  await page.fill('#group-form textarea[name="ios"]', '[{"action":"lock","mandatory":false}]');
  await page.fill('#group-form textarea[name="android"]', '[{"action":"clear_data","app_id":"com.epic.rover"}]');
  await submit(() => page.click('#group-form button[type="submit"]'));
  assert.match(await text('.notice'), /Browser iPhones/);
  const card = page.locator('.card.group[data-group="Browser iPhones"]');
  assert.equal(await card.locator('.lending').textContent(), '12 h');
  assert.deepEqual(await card.locator('.workflow-ios li.workflow-step').allTextContents(), ['Lock the device (device)']);
  assert.match(await card.locator('.workflow-android li.workflow-step').first().textContent(), /Force stop com\.epic\.rover and clear its data/);
  // The editor opens with the group's workflow pretty-printed.
  await submit(() => card.locator('a.edit-group').click());
  assert.match(await page.inputValue('#group-form textarea[name="ios"]'), /"action": "lock"/);
  assert.match(await text('#group-editor h2'), /Edit group Browser iPhones/);
});

test('an admin creates an enrolment token and devices enrol with it', async () => {
  await page.goto(`${base}/console/devices/groups`);
  await page.fill('#new-token-form input[name="name"]', '4 West iPhones');
  const group = await page.locator('#new-token-form select[name="group_id"] option', { hasText: 'Browser iPhones' }).getAttribute('value');
  await page.selectOption('#new-token-form select[name="group_id"]', group);
  await page.selectOption('#new-token-form select[name="location_id"]', LOCATION);
  await submit(() => page.click('#new-token-form button[type="submit"]'));
  enrolmentSecret = await text('#new-token .token-secret');
  assert.match(enrolmentSecret, /^sbe_/);
  await shot('devices-groups');
  await enrol('KIOSK001', '4W iPhone 01', 'A1', 90);
  await enrol('KIOSK002', '4W iPhone 02', 'A2', 40);
  await page.goto(`${base}/console/devices/groups`);
  assert.equal(await page.locator('#new-token').count(), 0);
  assert.ok(!(await page.content()).includes(enrolmentSecret));
  const row = page.locator('#enrolment-tokens tr.token', { hasText: '4 West iPhones' });
  assert.match(await row.textContent(), /active/);
  assert.match(await row.textContent(), /4 West/);
});

test('an admin adds a badge holder and imports two more by CSV (all or nothing)', async () => {
  await submit(() => page.click('#subnav-users'));
  assert.equal(await text('h1'), 'Directory');
  await page.fill('#new-device-user input[name="username"]', 'jdoe');
  await page.fill('#new-device-user input[name="display_name"]', 'Jane Doe');
  await page.fill('#new-device-user input[name="badge"]', BADGE);
  await page.fill('#new-device-user input[name="device_limit"]', '1');
  await submit(() => page.click('#new-device-user button[type="submit"]'));
  assert.match(await text('.notice'), /jdoe/);
  const jane = page.locator('#device-users tr.device-user[data-username="jdoe"]');
  assert.equal(await jane.locator('.badge-set').textContent(), 'yes');
  assert.ok(!(await page.content()).includes(BADGE), 'badge numbers are never shown');
  // A file with a bad line imports nothing and names the line.
  await page.fill('#import-users textarea[name="csv"]',
    'username,display_name,badge,device_limit\nasmith,Alex Smith,0020001,2\nbjones,Bo Jones,0020002,lots\n');
  const bad = await submit(() => page.click('#import-users button[type="submit"]'));
  assert.equal(bad.status(), 422);
  assert.match(await text('.field-errors li.field-error[data-field^="line 3"]'), /not a number/);
  assert.equal(await page.locator('#device-users tr.device-user').count(), 1);
  await page.fill('#import-users textarea[name="csv"]',
    'username,display_name,badge,device_limit\nasmith,Alex Smith,0020001,2\nbjones,Bo Jones,,\n');
  await submit(() => page.click('#import-users button[type="submit"]'));
  assert.match(await text('.notice'), /2 created, 0 updated/);
  assert.equal(await page.locator('#device-users tr.device-user').count(), 3);
  assert.equal(await page.locator('#device-users tr[data-username="bjones"] .badge-set').textContent(), 'no');
  await shot('devices-users');
});

test('the device list shows the enrolled devices and filters them', async () => {
  await submit(() => page.click('#subnav-list'));
  const rows = page.locator('#devices tr.device');
  assert.equal(await rows.count(), 2);
  const first = page.locator('#devices tr.device[data-serial="KIOSK001"]');
  assert.match(await first.textContent(), /4W iPhone 01/);
  assert.match(await first.locator('.location').textContent(), /4 West/);
  assert.match(await first.locator('.readiness').textContent(), /ready/);
  assert.match(await first.textContent(), /90%/);
  await page.selectOption('#device-filter select[name="location"]', LOCATION);
  await page.selectOption('#device-filter select[name="status"]', 'available');
  await Promise.all([page.waitForURL(/status=available/), page.click('#device-filter button[type="submit"]')]);
  assert.equal(await page.locator('#devices tr.device').count(), 2);
  await page.selectOption('#device-filter select[name="status"]', 'checked_out');
  await Promise.all([page.waitForURL(/status=checked_out/), page.click('#device-filter button[type="submit"]')]);
  assert.equal(await page.locator('#devices tr.device').count(), 0);
  assert.match(await text('.empty'), /No devices match/);
  await page.selectOption('#device-filter select[name="status"]', 'overdue');
  await Promise.all([page.waitForURL(/status=overdue/), page.click('#device-filter button[type="submit"]')]);
  assert.equal(await page.locator('#devices tr.device').count(), 0);
  await shot('devices-list-empty-filter');
  // A filter the use case refuses is shown, not a crash.
  const r = await page.goto(`${base}/console/devices?status=lost`);
  assert.equal(r.status(), 422);
  assert.match(await text('.error'), /status/);
});

test('the kiosk is set up with its key and checks a device out to a badge', async () => {
  const kioskUrl = new URL(kioskLink);
  const kctx = await browser.newContext();
  const kiosk = await kctx.newPage();
  kiosk.setDefaultTimeout(30_000);
  // Without its key the kiosk says it is not set up.
  let r = await kiosk.goto(`${base}/kiosk/${LOCATION}`);
  assert.equal(r.status(), 401);
  assert.match(await text('h1', kiosk), /not set up/);
  r = await kiosk.goto(`${base}/kiosk/${LOCATION}?key=wrong`);
  assert.equal(r.status(), 401);
  r = await fetch(`${base}/kiosk/${LOCATION}/tap`, { method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `badge=${BADGE}` });
  assert.equal(r.status, 401);
  // With it: the key moves to a cookie and the address loses it.
  r = await kiosk.goto(`${base}${kioskUrl.pathname}${kioskUrl.search}`);
  assert.equal(r.status(), 200);
  assert.equal(kiosk.url(), `${base}/kiosk/${LOCATION}`);
  const cookie = (await kctx.cookies()).find((c) => c.name === 'sb_kiosk');
  assert.ok(cookie, 'the kiosk keeps its key in a cookie');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(cookie.path, `/kiosk/${LOCATION}`);
  assert.equal(await text('.kiosk-prompt', kiosk), 'Tap your badge');
  assert.equal(await kiosk.evaluate(() => document.activeElement?.id), 'badge');
  await shot('kiosk-tap', kiosk);
  // A badge reader types digits and Enter.
  await kiosk.keyboard.type(BADGE);
  await submit(() => kiosk.keyboard.press('Enter'), kiosk);
  assert.equal(await text('#kiosk-ready', kiosk), 'Ready for Jane Doe');
  assert.equal(await text('#kiosk-device', kiosk), '4W iPhone 01');
  assert.equal(await text('#kiosk-slot', kiosk), 'A1');
  assert.equal(await text('#kiosk-serial', kiosk), 'KIOSK001');
  assert.ok(!(await kiosk.content()).includes(BADGE), 'the badge number is never echoed');
  assert.match(await kiosk.locator('meta[http-equiv="refresh"]').getAttribute('content'), /^8;url=\/kiosk\/ward-4w$/);
  assert.equal(await kiosk.locator('#tap-form input[name="badge"]').count(), 1);
  await shot('kiosk-ready', kiosk);
  // An unknown badge.
  await kiosk.fill('#badge', '999999');
  await submit(() => kiosk.press('#badge', 'Enter'), kiosk);
  assert.equal(await kiosk.locator('#kiosk-message').getAttribute('data-refusal'), 'unknown_badge');
  assert.match(await text('#kiosk-message', kiosk), /not known/);
  assert.ok(!(await kiosk.content()).includes('999999'));
  await shot('kiosk-unknown-badge', kiosk);
  // The same badge again: Jane already holds her one device.
  await kiosk.fill('#badge', BADGE);
  await submit(() => kiosk.press('#badge', 'Enter'), kiosk);
  assert.equal(await kiosk.locator('#kiosk-message').getAttribute('data-refusal'), 'at_device_limit');
  assert.match(await text('#kiosk-message', kiosk), /limit/);
  await kctx.close();
});

test('the console shows the check-out, checks the device in and the dashboard counts follow', async () => {
  await page.goto(`${base}/console/devices?status=checked_out&location=${LOCATION}`);
  const rows = page.locator('#devices tr.device');
  assert.equal(await rows.count(), 1);
  assert.equal(await rows.first().getAttribute('data-serial'), 'KIOSK001');
  assert.equal(await rows.first().locator('.holder').textContent(), 'Jane Doe');
  await shot('devices-list-checked-out');
  // The dashboard.
  await submit(() => page.click('#subnav-dashboard'));
  assert.equal(await page.locator('meta[http-equiv="refresh"]').getAttribute('content'), '10');
  let summary = page.locator(`#dashboard tr.location-summary[data-location="${LOCATION}"]`);
  assert.equal(await summary.locator('.available').textContent(), '1');
  assert.equal(await summary.locator('.checked-out').textContent(), '1');
  assert.equal(await summary.locator('.overdue').textContent(), '0');
  await shot('devices-dashboard');
  // The directory counts what Jane holds.
  await page.goto(`${base}/console/devices/users`);
  assert.equal(await page.locator('#device-users tr[data-username="jdoe"] .held').textContent(), '1');
  // The device page.
  await page.goto(`${base}/console/devices?status=checked_out`);
  await submit(() => page.locator('#devices tr.device a.device-link').first().click());
  assert.match(await text('#device-name'), /4W iPhone 01/);
  assert.equal(await text('#device-status'), 'checked out');
  assert.equal(await text('#device-holder'), 'Jane Doe (jdoe)');
  assert.match(await text('#install-ids'), /Rover: KIOSK001/);
  assert.equal(await page.locator('#no-receipts').count(), 1);
  assert.ok((await page.locator('#commands tr.command .kind').allTextContents()).includes('show_ready'));
  assert.ok((await page.locator('#timeline tr.kind-checkout').count()) >= 1);
  await shot('device-checked-out');
  await submit(() => page.click('#checkin-now'));
  assert.match(await text('.notice'), /Checked in/);
  assert.equal(await text('#device-status'), 'available');
  assert.equal(await text('#device-holder'), '—');
  const receipt = page.locator('.receipt').first();
  assert.equal(await page.locator('.receipt').count(), 1);
  const step = receipt.locator('tr.step').first();
  assert.match(await step.textContent(), /Lock the device/);
  assert.match(await step.textContent(), /device/);
  assert.match(await receipt.textContent(), /requested by user:/);
  assert.equal(await page.locator('#checkin-now').count(), 0);
  assert.ok((await page.locator('#timeline tr.kind-checkin').count()) >= 1);
  await shot('device-checked-in');
  // Operator commands.
  await page.fill('#message-form input[name="message"]', 'Please charge me');
  await submit(() => page.click('#message-form button[type="submit"]'));
  assert.match(await text('.notice'), /message is queued/);
  assert.ok((await page.locator('#commands tr.command .kind').allTextContents()).includes('show_message'));
  await submit(() => page.click('#lock-device'));
  assert.match(await text('.notice'), /lock command is queued/);
  // The dashboard again.
  await page.goto(`${base}/console/devices/dashboard`);
  summary = page.locator(`#dashboard tr.location-summary[data-location="${LOCATION}"]`);
  assert.equal(await summary.locator('.available').textContent(), '2');
  assert.equal(await summary.locator('.checked-out').textContent(), '0');
});

test('an operator marks a device lost: a banner on its page, a badge in the list, a count on the dashboard', async () => {
  await page.goto(`${base}/console/devices`);
  await submit(() => page.locator('#devices tr.device[data-serial="KIOSK002"] a.device-link').click());
  assert.equal(await page.locator('#lost-banner').count(), 0);
  await page.fill('#lost-form input[name="message"]', 'Please return me to the 4 West desk');
  await submit(() => page.click('#mark-lost'));
  assert.match(await text('.notice'), /4W iPhone 02 is in lost mode/);
  const banner = await text('#lost-banner');
  assert.match(banner, /^Lost since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC — marked lost by /);
  assert.match(await text('#device-name'), /LOST/);
  assert.equal(await page.locator('#lost-form').count(), 0, 'no second Mark lost');
  assert.ok((await page.locator('#commands tr.command .kind').allTextContents()).includes('lock_with_message'));
  assert.ok((await page.locator('#timeline tr.kind-event', { hasText: 'lost mode: marked lost by' }).count()) >= 1);
  await shot('device-lost');
  await page.goto(`${base}/console/devices`);
  assert.equal(await page.locator('#devices tr.device[data-serial="KIOSK002"] .lost-flag').textContent(), 'LOST');
  assert.equal(await page.locator('#devices tr.device[data-serial="KIOSK001"] .lost-flag').count(), 0);
  await shot('devices-list-lost');
  await page.goto(`${base}/console/devices/dashboard`);
  const summary = page.locator(`#dashboard tr.location-summary[data-location="${LOCATION}"]`);
  assert.equal(await summary.locator('.lost').textContent(), '1');
});

test('a device its MDM configured wrongly is listed on the dashboard with the reason check-out skips it', async () => {
  let r = await fetch(`${base}/agent/v1/enrol`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${enrolmentSecret}` },
    body: JSON.stringify({ serial: 'KIOSK003', platform: 'ios', name: '4W iPhone 03', slot: '3', model: 'iPhone 15',
      appconfig: { Rover: { EpicMobileDeviceID: '{DeviceUuId}', EpicMobileDeviceIDAppName: 'true' } } }),
  });
  assert.equal(r.status, 201, await r.clone().text());
  await page.goto(`${base}/console/devices/dashboard`);
  const summary = page.locator(`#dashboard tr.location-summary[data-location="${LOCATION}"]`);
  assert.equal(await summary.locator('.not-ready').textContent(), '1');
  const row = page.locator('#not-ready tr.not-ready-device', { hasText: '4W iPhone 03' });
  assert.equal(await row.count(), 1);
  assert.match(await row.locator('.reasons').textContent(), /Rover's EpicMobileDeviceID is the literal `\{DeviceUuId\}`: the MDM did not substitute its variable/);
  await shot('devices-dashboard-not-ready');
  // The count links to the filtered device list.
  await submit(() => summary.locator('.not-ready a').click());
  assert.deepEqual(await page.locator('#devices tr.device').evaluateAll((rows) => rows.map((r) => r.dataset.serial)), ['KIOSK003']);
});
