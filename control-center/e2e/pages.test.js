// Every page loads real data from the platform, and the role decides which controls are enabled.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { keys, launch, shoot, signedIn, visit, waitForText } from './browser.js';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

test('a viewer sees every page with live data and no enabled actions', async () => {
  const page = await signedIn(browser, keys.viewer);
  assert.match(await page.locator('.who').innerText(), /key:dev-viewer · viewer/);

  await visit(page, 'sagas', '.sagas');
  // The smoke test's order: its saga is listed.
  await page.waitForSelector('.saga-row', { timeout: 30_000 });
  // Ids by the end that tells them apart (the whole id in the title), times with their date.
  const row = page.locator('.saga-row').first();
  const cells = row.locator('td');
  assert.match(await cells.nth(0).innerText(), /^…[0-9a-f]{8}$/);
  assert.match(await cells.nth(0).getAttribute('title'), /^[0-9a-f]{8}-[0-9a-f-]{27}$/);
  assert.match(await cells.nth(4).innerText(), /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/);
  // Every step a saga can fail at, compensations included, is a filter.
  const steps = await page.locator('select[name="failing-step"] option').allInnerTexts();
  assert.ok(steps.includes('RELEASE_STOCK') && steps.includes('VOID_PAYMENT'), steps.join());
  await shoot(page, 'sagas');

  await visit(page, 'simulator', '.simulator');
  assert.equal(await page.locator('button[name="declined"]').isDisabled(), true);
  assert.equal(await page.locator('button[name="run-load"]').isDisabled(), true);

  await visit(page, 'dlq', '.dlq');
  await page.selectOption('select[name="service"]', 'inventory');
  await page.waitForSelector('tr.dead-letter', { timeout: 30_000 });
  await page.locator('tr.dead-letter').first().click();
  // A viewer sees what failed and why, not the record's contents.
  await page.waitForSelector('.inspect .redacted');
  assert.equal(await page.locator('.inspect pre.payload').count(), 0);
  assert.equal(await page.locator('button[name="replay"]').isDisabled(), true);

  await visit(page, 'chaos', '.chaos');
  await waitForText(page, '.fault-card[data-service="inventory"] .faults', (text) => text.includes('no faults'));
  assert.equal(await page.locator('.fault-card').count(), 7);
  assert.equal(await page.locator('.fault-card[data-service="payment"] button[name="inject-latency"]').isDisabled(), true);
  await page.waitForSelector('table.breakers tbody tr', { timeout: 30_000 });

  await visit(page, 'services', '.services');
  await page.waitForFunction(() => [...document.querySelectorAll('.service-card .version')]
    .filter((element) => element.textContent.trim().length > 0).length === 7, null, { timeout: 30_000 });
  // The log filter in force, as the service reports it.
  await page.waitForFunction(() => document
    .querySelector('.service-card[data-service="order"] input[name="log-filter"]')?.value.includes('info'));
  assert.equal(await page.locator('.service-card[data-service="order"] button[name="set-log-level"]').isDisabled(), true);

  await visit(page, 'infrastructure', '.infrastructure');
  await page.waitForSelector('tr[data-service="order"][data-dependency="postgres"] td.ok', { timeout: 30_000 });
  await page.waitForSelector('tr[data-service="gateway"][data-dependency="redis"] td.ok');
  await page.waitForSelector('tr.lag-row', { timeout: 30_000 });
  // Describing the broker is for operators.
  assert.match(await page.locator('.topics-summary').innerText(), /need the operator role/);

  // So is the audit trail.
  await visit(page, 'audit', '.audit');
  assert.match(await page.locator('.audit').innerText(), /needs the operator role/);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('an admin sees the configuration and can set a log level', async () => {
  const page = await signedIn(browser, keys.admin);
  await visit(page, 'services', '.services');
  const card = page.locator('.service-card[data-service="payment"]');
  await card.locator('details summary').waitFor({ timeout: 30_000 });
  await card.locator('details summary').click();
  const config = await card.locator('pre.config').innerText();
  assert.match(config, /\[payment\]/);
  assert.match(config, /<redacted>|postgres:\/\//);
  await card.locator('input[name="log-filter"]').fill('info,zentra_runtime::server=debug');
  await card.locator('button[name="set-log-level"]').click();
  await card.locator('[role="status"]').waitFor();
  assert.match(await card.locator('[role="status"]').innerText(), /log filter now info,zentra_runtime::server=debug/);
  await shoot(page, 'services');

  await visit(page, 'infrastructure', '.infrastructure');
  // The broker's topics, including ones nobody consumes, with the records the smoke order produced.
  await page.waitForSelector('tr.topic-row[data-topic$="notification.events"]', { timeout: 30_000 });
  await page.waitForSelector('tr.topic-row[data-topic$="inventory.commands.dlq"]');
  await waitForText(page, 'tr.topic-row[data-topic$="order.events"] td.records', (text) => Number(text) > 0);
  assert.match(await page.locator('.topics-summary').innerText(), /topics under ".*" of \d+ on the broker/);
  await shoot(page, 'infrastructure');

  // The log level just set is in the payment service's audit trail, with who set it.
  await visit(page, 'audit', '.audit');
  const record = page.locator('tr.audit-record', { hasText: 'SetLogLevel' }).filter({ hasText: 'payment' }).first();
  await record.waitFor({ timeout: 30_000 });
  const text = await record.innerText();
  assert.match(text, /log-filter/);
  assert.match(text, /key:dev-admin/);
  assert.match(text, /succeeded/);
  await shoot(page, 'audit');
  assert.deepEqual(page.errors, []);
  await page.close();
});
