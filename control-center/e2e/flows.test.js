// The acceptance flows: a declined payment compensates in the timeline, injected latency shows on
// the overview, and a replayed dead letter leaves the list.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { keys, launch, shoot, signedIn, visit, waitForText } from './browser.js';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

test('a payment declined from the simulator is rejected, with its compensations in the timeline', async () => {
  const page = await signedIn(browser, keys.operator);
  await visit(page, 'simulator', '.simulator');
  await page.click('button[name="declined"]');
  const run = page.locator('tr.run[data-scenario="declined"]').first();
  await waitForText(page, 'tr.run[data-scenario="declined"] td.order-status', (text) => text === 'REJECTED', 60_000);
  assert.equal(await run.locator('td.state').innerText(), 'COMPENSATED');
  assert.match(await run.locator('td.reason').innerText(), /declin/i);
  await shoot(page, 'simulator');

  await run.locator('a').click();
  await page.waitForSelector('#saga-state');
  await waitForText(page, '#saga-state', (text) => text === 'COMPENSATED');
  const steps = await page.locator('li.step').evaluateAll((items) => items.map((item) => item.dataset.step));
  assert.ok(steps.includes('RESERVE_STOCK'), steps.join());
  assert.ok(steps.includes('AUTHORIZE_PAYMENT'), steps.join());
  assert.ok(steps.includes('RELEASE_STOCK'), `the reservation is released: ${steps.join()}`);
  assert.ok(steps.includes('REJECT_ORDER'), `the order is rejected: ${steps.join()}`);
  // It has ended: nothing to retry, cancel or resume is offered.
  assert.equal(await page.locator('.actions button').count(), 0);
  await page.waitForSelector('#no-actions');
  // Every attempt has its own start time.
  assert.ok(await page.locator('li.attempt').count() >= 4);
  await shoot(page, 'saga');
  await page.close();
});

test('latency injected from the chaos hub shows in the overview', async () => {
  const page = await signedIn(browser, keys.admin);
  await visit(page, 'chaos', '.chaos');
  const card = page.locator('.fault-card[data-service="inventory"]');
  await card.locator('input[name="latency-ms"]').fill('400');
  await card.locator('input[name="seconds"]').fill('120');
  await card.locator('button[name="inject-latency"]').click();
  await card.locator('li.fault').waitFor({ timeout: 10_000 });
  assert.match(await card.locator('li.fault').innerText(), /latency 400\.0 ms/);
  await shoot(page, 'chaos');

  // Traffic for the inventory: an order's saga reserves its stock there.
  await visit(page, 'simulator', '.simulator');
  await page.click('button[name="happy"]');
  await visit(page, 'overview', '.overview');
  await waitForText(page, '.card[data-service="inventory"] .p99', (text) => {
    const value = Number.parseFloat(text);
    return (text.endsWith(' s') && value >= 0.4) || (text.endsWith(' ms') && value >= 400);
  }, 30_000);
  await shoot(page, 'overview-latency');

  await visit(page, 'chaos', '.chaos');
  await card.locator('button[name="clear"]').click();
  await waitForText(page, '.fault-card[data-service="inventory"] .faults', (text) => text.includes('no faults'), 10_000);
  await page.close();
});

test('a dead letter replayed from the control center leaves the list', async () => {
  const page = await signedIn(browser, keys.operator);
  await visit(page, 'dlq', '.dlq');
  await page.selectOption('select[name="service"]', 'inventory');
  const row = page.locator('tr.dead-letter').first();
  await row.waitFor({ timeout: 30_000 });
  const id = await row.getAttribute('data-id');
  await row.click();
  await page.waitForSelector('.inspect pre.payload');
  assert.match(await page.locator('.inspect').innerText(), /not an event envelope|poison/);
  await shoot(page, 'dlq');
  await page.click('button[name="replay"]');
  await page.waitForSelector('.dlq [role="status"]');
  assert.match(await page.locator('.dlq [role="status"]').innerText(), /replayed to .*inventory\.commands/);
  await page.waitForFunction((id) => !document.querySelector(`tr.dead-letter[data-id="${id}"]`), id, { timeout: 10_000 });
  await page.close();
});

test('the load tester runs a bounded mix to the end and measures it', async () => {
  const page = await signedIn(browser, keys.operator);
  await visit(page, 'simulator', '.simulator');
  await page.fill('input[name="count"]', '10');
  await page.fill('input[name="rate"]', '5');
  await page.fill('input[name="declined"]', '20');
  await page.click('button[name="run-load"]');
  await waitForText(page, '.load-state', (text) => text === 'finished', 90_000);
  const facts = Object.fromEntries(await page.locator('dl.load dt').evaluateAll((terms) =>
    terms.map((term) => [term.textContent, term.nextElementSibling.textContent])));
  assert.equal(facts.Sent, '10');
  assert.equal(Number(facts.Completed) + Number(facts.Compensated), 10, JSON.stringify(facts));
  assert.equal(facts.Compensated, '2', JSON.stringify(facts));
  assert.ok(Number.parseFloat(facts.p99) > 0, JSON.stringify(facts));
  await shoot(page, 'simulator-load');
  await page.close();
});
