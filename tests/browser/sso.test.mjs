// Password AutoFill and AppConfig in headless Chromium: SSO profiles (import, hostile XML
// refused, export, replace, remove), a directory user's credentials (set, imported from CSV,
// removed; never a password on the page), and the AppConfig generator for the four MDMs.
// Started by crates/cli/tests/browser.rs with SWITCHBOARD_URL and SWITCHBOARD_TOKEN set; it adds
// its own directory users, so it runs after devices.test.mjs (one file at a time).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

const base = process.env.SWITCHBOARD_URL;
const token = process.env.SWITCHBOARD_TOKEN;
const shots = process.env.SCREENSHOT_DIR;
// The structure of the SSO profile example in the product's source material (as in
// crates/cli/tests/devices.rs).
const SSO_EXAMPLE = `<SSO>
    <global verCreate="6.0" verLastMod="6.0"/>
        <app nm="epic.com" desc="Epic Rover" profileType="2" appType="0">
            <env type="200" nm="iOS">
                <scn nm="" auto="0" dgs="1">
                    <ctl var="USR"/>
                    <ctl var="PWD"/>
                </scn>
            </env>
        </app>
    <containers/>
</SSO>`;
const HAIKU_APP = '<app nm="Haiku" desc="Haiku"><env type="200" nm="iOS"><scn nm="login"><ctl var="USR"/><ctl var="PWD"/></scn></env></app>';
const PASSWORD = 'Browser-Vault-Pw-4417';
const CSV_PASSWORD = 'Csv-Vault-Pw-9921';
let browser;
let page;
let profileId;

before(async () => {
  assert.ok(base && token, 'SWITCHBOARD_URL and SWITCHBOARD_TOKEN must be set');
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  page = await (await browser.newContext({ acceptDownloads: true })).newPage();
  page.setDefaultTimeout(30_000);
});

after(async () => { await browser?.close(); });

async function shot(name) {
  if (shots) await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

/// Runs `act` (a click that submits a form) and waits for the new page to load; answers the
/// response of the navigation.
async function submit(act) {
  const response = page.waitForResponse((r) => r.request().isNavigationRequest() && r.request().frame() === page.mainFrame());
  const committed = page.waitForEvent('framenavigated', (f) => f === page.mainFrame());
  await act();
  const [r] = await Promise.all([response, committed]);
  await page.waitForLoadState('load');
  return r;
}

/// Runs `act` (a click that downloads a file) and answers the file's name and text.
async function download(act) {
  const [d] = await Promise.all([page.waitForEvent('download'), act()]);
  return { name: d.suggestedFilename(), text: await readFile(await d.path(), 'utf8') };
}

async function text(selector) {
  return (await page.locator(selector).first().textContent()).trim();
}

async function profileRows() {
  return page.locator('#sso-profiles tr.sso-profile').count();
}

test('an admin signs in and imports the SSO profile, listed with one-tap', async () => {
  await page.goto(`${base}/console/login`);
  await page.fill('#token-form input[name="token"]', token);
  await Promise.all([page.waitForURL(`${base}/console`), page.click('#token-form button[type="submit"]')]);
  await page.goto(`${base}/console/devices`);
  await submit(() => page.click('#subnav-sso'));
  assert.equal(await text('h1'), 'SSO profiles');
  assert.equal(await profileRows(), 0);
  await page.fill('#import-profile textarea[name="xml"]', SSO_EXAMPLE);
  const r = await submit(() => page.click('#import-profile button[type="submit"]'));
  assert.equal(r.status(), 200);
  assert.match(await text('.notice'), /Epic Rover.*1 app \(1 one-tap\)/);
  assert.equal(await profileRows(), 1);
  const row = page.locator('#sso-profiles tr.sso-profile[data-name="Epic Rover"]');
  assert.equal(await row.locator('code.nm').textContent(), 'epic.com');
  assert.equal((await row.locator('.one-tap').textContent()).trim(), 'yes');
  profileId = await row.getAttribute('data-id');
  assert.match(profileId, /^sso_/);
  await shot('sso-profiles');
});

test('hostile or incomplete XML is refused with the reason beside the form and nothing is added', async () => {
  const cases = [
    ['<!DOCTYPE SSO [<!ENTITY x "y">]><SSO/>', /DOCTYPE and entity declarations are not accepted/],
    [SSO_EXAMPLE.replace('<ctl var="PWD"/>', ''), /needs an <env> with a <scn> holding both/],
    ['<SSO><app', /malformed/],
  ];
  for (const [xml, why] of cases) {
    await page.fill('#import-profile textarea[name="xml"]', xml);
    const r = await submit(() => page.click('#import-profile button[type="submit"]'));
    assert.equal(r.status(), 422, xml);
    assert.match(await text('.error'), /nothing was stored/);
    assert.match(await text('#import-profile-card li.field-error[data-field="xml"]'), why);
    // What was typed stays in the box to be corrected.
    assert.equal(await page.inputValue('#import-profile textarea[name="xml"]'), xml);
    assert.equal(await profileRows(), 1, 'nothing stored');
    if (xml.startsWith('<!DOCTYPE')) await shot('sso-profile-doctype-refused');
  }
});

test('the profile page shows its apps and XML; export downloads exactly that XML', async () => {
  await page.goto(`${base}/console/devices/sso-profiles`);
  await submit(() => page.locator('a.profile-link', { hasText: 'Epic Rover' }).click());
  assert.equal(await text('#profile-name'), 'Epic Rover');
  assert.equal(await text('#profile-apps tr.profile-app[data-nm="epic.com"] .one-tap'), 'yes');
  const shown = await page.inputValue('#replace-profile textarea[name="xml"]');
  // The same elements, attributes (in their order) and values as imported.
  assert.match(shown, /<app nm="epic.com" desc="Epic Rover" profileType="2" appType="0">/);
  assert.match(shown, /<scn nm="" auto="0" dgs="1">/);
  assert.match(shown, /<global verCreate="6.0" verLastMod="6.0"\/>/);
  const file = await download(() => page.click('#export-xml'));
  assert.equal(file.name, `${profileId}.xml`);
  assert.equal(file.text, shown);
  const r = await fetch(`${base}/console/devices/sso-profiles/${profileId}/xml`, { headers: { cookie: await cookieHeader() } });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /application\/xml/);
  assert.equal(r.headers.get('content-disposition'), `attachment; filename="${profileId}.xml"`);
  await shot('sso-profile');
});

async function cookieHeader() {
  return (await page.context().cookies()).map((c) => `${c.name}=${c.value}`).join('; ');
}

test('saving the edited XML replaces the profile; a refused edit keeps the old one', async () => {
  const xml = SSO_EXAMPLE.replace('<containers/>', `${HAIKU_APP}<containers/>`);
  await page.fill('#replace-profile textarea[name="xml"]', xml);
  await submit(() => page.click('#replace-profile button[type="submit"]'));
  assert.match(await text('.notice'), /replaced: 2 apps \(1 one-tap\)/);
  assert.equal(await text('#profile-apps tr.profile-app[data-nm="Haiku"] .one-tap'), 'no: offered from a list');
  assert.match(await page.inputValue('#replace-profile textarea[name="xml"]'), /<app nm="Haiku" desc="Haiku">/);
  // A hostile replacement changes nothing.
  await page.fill('#replace-profile textarea[name="xml"]', '<!DOCTYPE SSO><SSO/>');
  const r = await submit(() => page.click('#replace-profile button[type="submit"]'));
  assert.equal(r.status(), 422);
  assert.match(await text('li.field-error[data-field="xml"]'), /DOCTYPE/);
  assert.equal(await page.locator('#profile-apps tr.profile-app').count(), 2);
  await page.goto(`${base}/console/devices/sso-profiles/${profileId}`);
  assert.match(await page.inputValue('#replace-profile textarea[name="xml"]'), /Haiku/);
});

test('a credential is set for a directory user and listed without its password', async () => {
  await page.goto(`${base}/console/devices/users`);
  await page.fill('#new-device-user input[name="username"]', 'sso.nurse');
  await page.fill('#new-device-user input[name="display_name"]', 'Sam Nurse');
  await submit(() => page.click('#new-device-user button[type="submit"]'));
  await submit(() => page.locator('#device-users tr[data-username="sso.nurse"] a.credentials-link').click());
  assert.match(await text('#credentials-user'), /Sam Nurse/);
  assert.equal(await page.locator('#credentials tr.credential').count(), 0);
  assert.equal(await page.getAttribute('#set-credential input[name="password"]', 'type'), 'password');
  // A username of spaces is refused; the password typed is not sent back.
  await page.selectOption('#set-credential select[name="profile_id"]', profileId);
  await page.fill('#set-credential input[name="username"]', '   ');
  await page.fill('#set-credential input[name="password"]', PASSWORD);
  let r = await submit(() => page.click('#set-credential button[type="submit"]'));
  assert.equal(r.status(), 422);
  assert.match(await text('#set-credential-card li.field-error[data-field="username"]'), /1-256 characters/);
  assert.ok(!(await r.text()).includes(PASSWORD), 'no password in the refused page');
  assert.equal(await page.inputValue('#set-credential input[name="password"]'), '');
  assert.equal(await page.locator('#credentials tr.credential').count(), 0);
  await page.fill('#set-credential input[name="username"]', 'SNURSE');
  await page.fill('#set-credential input[name="password"]', PASSWORD);
  r = await submit(() => page.click('#set-credential button[type="submit"]'));
  assert.equal(r.status(), 200);
  assert.match(await text('.notice'), /Epic Rover.*SNURSE/);
  const row = page.locator(`#credentials tr.credential[data-profile="${profileId}"]`);
  assert.equal(await row.locator('.username').textContent(), 'SNURSE');
  assert.equal(await row.locator('.source').textContent(), 'an administrator');
  assert.ok(!(await r.text()).includes(PASSWORD), 'no password in the page');
  await page.reload();
  assert.ok(!(await page.content()).includes(PASSWORD), 'no password in the page');
  await shot('sso-credentials');
});

test('credentials are imported from CSV on the directory page (all or nothing) and removed one by one', async () => {
  await page.goto(`${base}/console/devices/users`);
  await page.fill('#new-device-user input[name="username"]', 'sso.porter');
  await page.fill('#new-device-user input[name="display_name"]', 'Pat Porter');
  await submit(() => page.click('#new-device-user button[type="submit"]'));
  // A line naming nobody refuses the whole file, naming the line; the file is not shown back.
  await page.fill('#import-credentials textarea[name="csv"]',
    `user,profile,username,password\nsso.nurse,Epic Rover,SNURSE2,${CSV_PASSWORD}\nnobody.here,Epic Rover,NOBODY,${CSV_PASSWORD}\n`);
  let r = await submit(() => page.click('#import-credentials button[type="submit"]'));
  assert.equal(r.status(), 422);
  assert.match(await text('.error'), /Nothing was imported/);
  assert.match(await text('#import-credentials-card li.field-error[data-field="line 3: user"]'), /nobody\.here/);
  assert.equal(await page.inputValue('#import-credentials textarea[name="csv"]'), '');
  assert.ok(!(await r.text()).includes(CSV_PASSWORD), 'no password in the refused page');
  await shot('sso-credentials-import-refused');
  await page.fill('#import-credentials textarea[name="csv"]',
    `user,profile,username,password\nsso.nurse,Epic Rover,SNURSE2,${CSV_PASSWORD}\nsso.porter,${profileId},SPORTER,${CSV_PASSWORD}\n`);
  r = await submit(() => page.click('#import-credentials button[type="submit"]'));
  assert.equal(r.status(), 200);
  assert.match(await text('.notice'), /1 set, 1 replaced/);
  assert.ok(!(await r.text()).includes(CSV_PASSWORD), 'no password in the page');
  await submit(() => page.locator('#device-users tr[data-username="sso.nurse"] a.credentials-link').click());
  assert.equal(await text(`#credentials tr.credential[data-profile="${profileId}"] .username`), 'SNURSE2');
  await page.goto(`${base}/console/devices/users`);
  await submit(() => page.locator('#device-users tr[data-username="sso.porter"] a.credentials-link').click());
  assert.equal(await text('#credentials tr.credential .username'), 'SPORTER');
  assert.ok(!(await page.content()).includes(CSV_PASSWORD));
  await submit(() => page.click('#credentials tr.credential button.remove-credential'));
  assert.match(await text('.notice'), /Credential removed/);
  assert.equal(await page.locator('#credentials tr.credential').count(), 0);
});

test('the AppConfig generator refuses a short unlock PIN beside its field, keeping what was typed', async () => {
  await page.goto(`${base}/console/devices`);
  await submit(() => page.click('#subnav-appconfig'));
  assert.equal(await text('h1'), 'Managed AppConfig');
  assert.equal(await page.isChecked('#appconfig-form input[name="rover_enabled"]'), true);
  await page.fill('#appconfig-form input[name="rover_configuration_url"]', 'epicrover://handheld/config/ABCD1234');
  await page.check('#appconfig-form input[name="haiku_enabled"]');
  await page.fill('#appconfig-form input[name="haiku_configuration_url"]', 'https://not-epic.example.org/x');
  await page.fill('#appconfig-form input[name="server_url"]', base);
  await page.fill('#appconfig-form input[name="enrollment_token"]', 'sbe_browser-appconfig-token');
  await page.fill('#appconfig-form input[name="unlock_pin"]', '12');
  const r = await submit(() => page.click('#generate-appconfig'));
  assert.equal(r.status(), 422);
  assert.match(await text('.error'), /Nothing was generated/);
  assert.match(await text('#locker-settings li.field-error[data-field="locker.unlock_pin"]'), /4 to 8 digits/);
  assert.match(await text('#app-haiku li.field-error[data-field="Haiku.configuration_url"]'), /epichaiku:\/\//);
  assert.equal(await page.locator('#app-rover li.field-error').count(), 0);
  assert.equal(await page.locator('.appconfig-file').count(), 0);
  assert.equal(await page.inputValue('#appconfig-form input[name="unlock_pin"]'), '12');
  assert.equal(await page.inputValue('#appconfig-form input[name="rover_configuration_url"]'), 'epicrover://handheld/config/ABCD1234');
  await shot('appconfig-errors');
});

test('the AppConfig generator shows each MDM document and downloads one', async () => {
  await page.fill('#appconfig-form input[name="haiku_configuration_url"]', 'epichaiku://handheld/config/ABCD1234');
  await page.fill('#appconfig-form input[name="unlock_pin"]', '2468');
  await submit(() => page.click('#generate-appconfig'));
  assert.match(await text('.notice'), /12 documents generated/);
  const content = async (name) => (await page.locator(`.appconfig-file[data-filename="${name}"] pre`).textContent());
  assert.equal(await page.locator('.appconfig-file').count(), 12);
  assert.match(await content('rover-workspace-one.csv'), /EpicMobileDeviceID,String,\{DeviceSerialNumber\}/);
  assert.match(await content('rover-intune.xml'), /<string>\{\{serialnumber\}\}<\/string>/);
  assert.match(await content('rover-jamf.plist'), /<string>\$SERIALNUMBER<\/string>/);
  assert.match(await content('rover-app-config-xml.xml'), /<managedAppConfiguration>/);
  assert.match(await content('rover-app-config-xml.xml'), /<bundleId>com\.epic\.rover<\/bundleId>/);
  assert.match(await content('haiku-intune.xml'), /epichaiku:\/\/handheld\/config\/ABCD1234/);
  const locker = await content('locker-jamf.plist');
  assert.match(locker, /<key>epicRoverEpicMobileDeviceID<\/key>\s*<string>\$SERIALNUMBER<\/string>/);
  assert.match(locker, /<key>UnlockPIN<\/key>\s*<string>2468<\/string>/);
  assert.match(locker, /sbe_browser-appconfig-token/);
  await shot('appconfig-documents');
  const file = await download(() => page.locator('.appconfig-file[data-filename="locker-intune.xml"] button.download-file').click());
  assert.equal(file.name, 'locker-intune.xml');
  assert.equal(file.text, await content('locker-intune.xml'));
  // One MDM only.
  await page.selectOption('#appconfig-form select[name="mdm"]', 'jamf');
  await submit(() => page.click('#generate-appconfig'));
  assert.deepEqual(await page.locator('.appconfig-file').evaluateAll((els) => els.map((e) => e.dataset.filename)),
    ['rover-jamf.plist', 'haiku-jamf.plist', 'locker-jamf.plist']);
});

test('removing the profile needs the confirm box', async () => {
  await page.goto(`${base}/console/devices/sso-profiles/${profileId}`);
  let r = await submit(() => page.click('#delete-profile button[type="submit"]'));
  assert.equal(r.status(), 422);
  assert.match(await text('.error'), /Nothing was removed/);
  assert.equal(await text('#profile-name'), 'Epic Rover');
  await page.check('#delete-profile input[name="confirm"]');
  r = await submit(() => page.click('#delete-profile button[type="submit"]'));
  assert.equal(r.status(), 200);
  assert.match(await text('.notice'), /Epic Rover.*removed/);
  assert.equal(await profileRows(), 0);
  r = await page.goto(`${base}/console/devices/sso-profiles/${profileId}`);
  assert.equal(r.status(), 404);
  // The users' credentials for it went with it.
  await page.goto(`${base}/console/devices/users`);
  await submit(() => page.locator('#device-users tr[data-username="sso.nurse"] a.credentials-link').click());
  assert.equal(await page.locator('#credentials tr.credential').count(), 0);
});

test('a profile and a credentials CSV can be chosen as files instead of pasted', async () => {
  await page.goto(`${base}/console/devices/sso-profiles`);
  await page.setInputFiles('#import-profile input[type="file"][name="xml"]', {
    name: 'rover.xml', mimeType: 'application/xml', buffer: Buffer.from(SSO_EXAMPLE),
  });
  let r = await submit(() => page.click('#import-profile button[type="submit"]'));
  assert.equal(r.status(), 200);
  assert.match(await text('.notice'), /Epic Rover.*1 app \(1 one-tap\)/);
  assert.equal(await profileRows(), 1);
  // A file that is not a profile: refused with the parser's reason, as when pasted.
  await page.setInputFiles('#import-profile input[type="file"][name="xml"]', {
    name: 'bad.xml', mimeType: 'application/xml', buffer: Buffer.from('<!DOCTYPE SSO [<!ENTITY x "y">]><SSO/>'),
  });
  r = await submit(() => page.click('#import-profile button[type="submit"]'));
  assert.equal(r.status(), 422);
  assert.match(await text('#import-profile-card li.field-error[data-field="xml"]'), /DOCTYPE/);
  assert.equal(await profileRows(), 1);
  await page.goto(`${base}/console/devices/users`);
  await page.setInputFiles('#import-credentials input[type="file"][name="csv"]', {
    name: 'credentials.csv', mimeType: 'text/csv', buffer: Buffer.from('user,profile,username,password\nsso.nurse,Epic Rover,FILE1,file-secret-1\n'),
  });
  r = await submit(() => page.click('#import-credentials button[type="submit"]'));
  assert.equal(r.status(), 200);
  assert.ok(!(await r.text()).includes('file-secret-1'), 'the password is never shown');
  await page.goto(`${base}/console/devices/users`);
  await submit(() => page.locator('#device-users tr[data-username="sso.nurse"] a.credentials-link').click());
  assert.equal(await page.locator('#credentials tr.credential').count(), 1);
  assert.match(await page.locator('#credentials tr.credential').textContent(), /FILE1/);
});
